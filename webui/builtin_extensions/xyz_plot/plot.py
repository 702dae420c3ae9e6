"""Running an X/Y/Z plot: values parsed and checked (before any image), cells generated, the labelled grid."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from PIL import Image

from webui.extensions.api import (ExtensionError, GenerationRequest, ModelInfo, ScriptContext, ScriptResult,
                                  ScriptRun, labelled_grid, with_infotext_fields)

from .axes import CHECKPOINT, HIRES_UPSCALER, NOTHING, REFINER, Axis, find_axis
from .values import ValuesError, parse_values, split_values

TITLE = "X/Y/Z plot"
MAX_GRID_PIXELS = 200_000_000  # A1111's img_max_size_mp default (200 MP)
SEED_AXES = ("Seed", "Var. seed")
# A1111's latent upscale modes: valid hires upscalers that are no upscaler files (the context lists those).
LATENT_MODES = ("Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                "Latent (nearest)", "Latent (nearest-exact)")
NO_REFINER = ("", "none")
SAME_SAMPLER = "Use same sampler"  # A1111's hires sampler choice meaning "as the first pass"


@dataclass(frozen=True)
class AxisValues:
    name: str                # "X", "Y" or "Z"
    axis: Axis
    text: str                # as the user wrote it (the infotext's "X Values")
    values: list[Any]
    typed: list[Any] | None = None  # the values as the user wrote them, where ``values`` were made canonical

    @property
    def labels(self) -> list[str]:
        """Grid labels from what the user wrote (A1111 labels a checkpoint by the name typed, not its title)."""
        return [self.axis.caption(v) for v in (self.typed or self.values)]


def _random_seed() -> int:
    return random.randrange(4294967294)  # A1111's range for a fixed -1


def build_request(base: GenerationRequest, updates: dict[str, Any]) -> GenerationRequest:
    """``base`` with ``updates``, validated again as a new request (sampler names made canonical, bounds checked)."""
    return type(base)(**{**dict(base), **updates})


def _problem(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):  # pydantic's ValidationError: the first problem, in words
        first = errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        return f"{loc}: {first.get('msg', 'is not valid')}" if loc else str(first.get("msg", exc))
    return str(exc)


def _match_checkpoint(value: str, checkpoints: list[ModelInfo]) -> ModelInfo | None:
    """A1111's get_closet_checkpoint_match: a title, a file name, a name or a hash, then the shortest title
    holding the text."""
    wanted = value.strip().lower()
    if not wanted:
        return None
    for info in checkpoints:
        file_name = info.title.rsplit(" [", 1)[0]
        if wanted in {info.title.lower(), file_name.lower(), info.name.lower(), (info.hash or "").lower()}:
            return info
    holding = sorted((info for info in checkpoints if wanted and wanted in info.title.lower()),
                     key=lambda info: len(info.title))
    return holding[0] if holding else None


def parse_axis(name: str, tab: str, label: str, text: str, raw_mode: bool, run: ScriptRun) -> AxisValues:
    """One axis's values, typed, checked against what the app has and made canonical; ExtensionError naming the
    axis and the value otherwise."""
    try:
        axis = find_axis(tab, label)
    except KeyError:
        raise ExtensionError(f"{name} type: no axis '{label}' in {tab}") from None
    if axis.label == NOTHING:
        return AxisValues(name, axis, "", [None])
    where = f"{name} values ({axis.label})"
    try:
        values = parse_values(split_values(text, raw_mode), axis.kind)
    except ValuesError as exc:
        raise ExtensionError(f"{where}: {exc}") from None
    context = run.context
    typed = list(values) if axis.names in (CHECKPOINT, REFINER) else None
    if axis.names in (CHECKPOINT, REFINER):
        checkpoints = context.checkpoints()
        fixed = []
        for value in values:
            if axis.names == REFINER and value.strip().lower() in NO_REFINER:
                fixed.append("None")
                continue
            info = _match_checkpoint(value, checkpoints)
            if info is None:
                raise ExtensionError(f"{where}: unknown checkpoint '{value}' (checkpoints: "
                                     f"{', '.join(c.title for c in checkpoints) or 'none'})")
            fixed.append(info.title)
        values = fixed
    elif axis.names == HIRES_UPSCALER:
        known = {name.lower(): name for name in (*LATENT_MODES, *context.upscalers())}
        for i, value in enumerate(values):
            if value.lower() not in known:
                raise ExtensionError(f"{where}: unknown upscaler '{value}' (upscalers: {', '.join(known.values())})")
            values[i] = known[value.lower()]
    if axis.label == "Prompt S/R":
        request = run.request
        if not values[0]:  # replacing "" would put the value between every two letters
            raise ExtensionError(f"{where}: the first value is what is searched for in the prompt; it must not be "
                                 "empty")
        if values[0] not in request.prompt and values[0] not in request.negative_prompt:
            raise ExtensionError(f"{where}: the first value '{values[0]}' is in neither the prompt nor the "
                                 "negative prompt (Prompt S/R replaces it with each value)")
    if axis.label == "Hires sampler":  # checked as a sampler even while hires fix is off (A1111 does too)
        sampler = find_axis(tab, "Sampler")
        values = [value if value.lower() == SAME_SAMPLER.lower() else _checked(run.request, sampler, value, values, where)
                  for value in values]
    if axis.field is not None and axis.apply is None:
        values = [_checked(run.request, axis, value, values, where) for value in values]
    return AxisValues(name, axis, text, values, typed)


def _checked(base: GenerationRequest, axis: Axis, value: Any, values: list[Any], where: str) -> Any:
    """The value as the request takes it (a sampler's canonical name...), or ExtensionError naming it."""
    fields = dict(base)
    axis.set(fields, value, values)
    try:
        request = build_request(base, {axis.field: fields[axis.field]}) if axis.field else base
    except Exception as exc:  # noqa: BLE001 - the request's own checks (pydantic or ours) name the problem
        raise ExtensionError(f"{where}: '{value}' is not accepted: {_problem(exc)}") from None
    canonical = getattr(request, axis.field) if axis.field else value
    return value if canonical is None and axis.field == "refiner_checkpoint" else canonical


def processing_order(axes: list[AxisValues]) -> list[AxisValues]:
    """Outer loop first: the costliest axis (a checkpoint) changes least often; otherwise Z, then Y, then X."""
    return sorted(reversed(axes), key=lambda a: -a.axis.cost)


def run_plot(run: ScriptRun) -> ScriptResult:
    values = run.values
    if values is None:
        raise ExtensionError("X/Y/Z plot needs its values (x_type, x_values...)")
    base = run.request
    fixed: dict[str, Any] = {}
    if not values.no_fixed_seeds:  # A1111's fix_seed: every cell shares one seed unless an axis varies it
        if base.seed == -1:
            fixed["seed"] = _random_seed()
        if base.subseed == -1:
            fixed["subseed"] = _random_seed()
    if fixed:
        base = build_request(base, fixed)
        run = ScriptRun(run.kind, base, run.values, run.context)
    axes = [parse_axis(n, run.kind, getattr(values, f"{n.lower()}_type"), getattr(values, f"{n.lower()}_values"),
                       values.raw_mode, run) for n in "XYZ"]
    if not values.no_fixed_seeds:
        axes = [AxisValues(a.name, a.axis, a.text, [_random_seed() if v == -1 else v for v in a.values])
                if a.axis.label in SEED_AXES else a for a in axes]  # labels show the seeds drawn
    xs, ys, zs = axes
    cells = len(xs.values) * len(ys.values) * len(zs.values)
    if cells * base.width * base.height > MAX_GRID_PIXELS:
        raise ExtensionError(f"the grid would be too large: {cells} cells of {base.width}x{base.height} "
                             f"(at most {MAX_GRID_PIXELS // 1_000_000} megapixels)")
    requests = _cell_requests(base, xs, ys, zs)  # all built (and so checked) before the first image
    return _generate(run, values, xs, ys, zs, requests)


def _cell_requests(base: GenerationRequest, xs: AxisValues, ys: AxisValues,
                   zs: AxisValues) -> dict[tuple[int, int, int], GenerationRequest]:
    out = {}
    for iz, z in enumerate(zs.values):
        for iy, y in enumerate(ys.values):
            for ix, x in enumerate(xs.values):
                fields = dict(base)
                for axes, value in ((xs, x), (ys, y), (zs, z)):
                    axes.axis.set(fields, value, axes.values)
                try:
                    out[ix, iy, iz] = type(base)(**fields)
                except Exception as exc:  # noqa: BLE001 - as in _checked: the request names the problem
                    labels = ", ".join(a.axis.caption(v) for a, v in ((xs, x), (ys, y), (zs, z))
                                       if a.axis.label != NOTHING)
                    raise ExtensionError(f"the cell {labels} is not a valid request: {_problem(exc)}") from None
    return out


def _generate(run: ScriptRun, values: Any, xs: AxisValues, ys: AxisValues, zs: AxisValues,
              requests: dict[tuple[int, int, int], GenerationRequest]) -> ScriptResult:
    context: ScriptContext = run.context
    total = len(requests)
    order = processing_order([xs, ys, zs])
    index = {id(a): i for i, a in enumerate((xs, ys, zs))}
    keys = sorted(requests, key=lambda k: tuple(k[index[id(a)]] for a in order))
    images: dict[tuple[int, int, int], Image.Image] = {}
    infotexts: dict[tuple[int, int, int], str] = {}
    seeds: dict[tuple[int, int, int], int] = {}
    warnings: list[str] = []
    stopped = False
    for done, key in enumerate(keys):
        if context.interrupted:
            stopped = True
            break
        context.progress(f"Cell {done + 1} of {total}", done, total)
        result = context.generate(requests[key])
        warnings += [w for w in result.warnings if w not in warnings]
        if result.images:
            images[key] = result.grid if result.grid is not None else result.images[0]
            infotexts[key] = result.infotexts[0] if result.infotexts else ""
            seeds[key] = result.seeds[0] if result.seeds else -1
        if result.interrupted:
            stopped = True
            break
    if not images:
        return ScriptResult(images=[], infotexts=[], warnings=warnings + ["X/Y/Z plot: no cell was generated"])
    context.progress(f"Cell {total} of {total}" if not stopped else "Interrupted", len(images), total)
    if stopped:
        warnings.append(f"X/Y/Z plot interrupted: {len(images)} of {total} cells made")
    first = images[keys[0]] if keys[0] in images else next(iter(images.values()))
    blank = Image.new(first.mode, first.size)  # cells never made (interrupted) stay black, as in A1111

    def cell(key: tuple[int, int, int]) -> Image.Image:
        return images.get(key, blank)

    legend = values.draw_legend
    margin = values.margin_size
    sub_grids = []
    for iz in range(len(zs.values)):
        cells = [cell((ix, iy, iz)) for iy in range(len(ys.values)) for ix in range(len(xs.values))]
        x_labels = xs.labels if legend else [""] * len(xs.values)
        y_labels = ys.labels if legend else [""] * len(ys.values)
        sub_grids.append(labelled_grid(cells, x_labels, y_labels, margin))
    z_labels = zs.labels if legend else [""] * len(zs.values)
    grid = labelled_grid(sub_grids, z_labels, [""])
    first_text = infotexts.get((0, 0, 0)) or next(iter(infotexts.values()))
    grid_infotext = with_infotext_fields(first_text, _grid_fields(values, xs, ys, zs))
    out_images: list[Image.Image] = []
    out_texts: list[str] = []
    out_seeds: list[int] = []
    if values.include_sub_grids:
        for iz, sub in enumerate(sub_grids):
            text = infotexts.get((0, 0, iz)) or first_text
            out_images.append(sub)
            out_texts.append(with_infotext_fields(text, _grid_fields(values, xs, ys, None)))
            out_seeds.append(seeds.get((0, 0, iz), -1))
    if values.include_lone_images:
        for key in sorted(images, key=lambda k: (k[2], k[1], k[0])):
            out_images.append(images[key])
            out_texts.append(infotexts[key])
            out_seeds.append(seeds[key])
    return ScriptResult(images=out_images, infotexts=out_texts, seeds=out_seeds, grid=grid,
                        grid_infotext=grid_infotext, warnings=warnings)


def _grid_fields(values: Any, *axes: AxisValues | None) -> dict[str, str]:
    """A1111's grid keys: Script, then X/Y(/Z) Type and Values, and the seeds a -1 was fixed to."""
    fields = {"Script": TITLE}
    for axis in axes:
        if axis is None or axis.axis.label == NOTHING:
            continue
        fields[f"{axis.name} Type"] = axis.axis.label
        fields[f"{axis.name} Values"] = axis.text
        if axis.axis.label in SEED_AXES and not values.no_fixed_seeds:
            fields[f"Fixed {axis.name} Values"] = ", ".join(str(v) for v in axis.values)
    return fields
