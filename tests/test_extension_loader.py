"""The extension loader: one broken, hung, exiting or incompatible extension is reported and skipped, the rest load,
and no extension can weaken the core's pickle policy."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from webui.errors import ModelLoadError
from webui.extensions.host import DISABLED, FAILED, INCOMPATIBLE, LOADED
from webui.extensions.loader import LoadOptions, load_extensions
from tests.extension_files import write_extension

WORKS = """
    from webui.extensions.api import Setting

    def setup(ext):
        ext.add_setting(Setting(key="greeting", default="hi", label="Greeting"))
"""


def load(tmp_path, **options):
    builtins = tmp_path / "builtin"
    builtins.mkdir(exist_ok=True)
    return load_extensions(LoadOptions(user_dir=tmp_path / "user", builtin_dir=builtins, **options),
                           make_context=lambda name: None)


def test_good_and_bad_extensions_load_side_by_side(tmp_path, caplog):
    user = tmp_path / "user"
    write_extension(user, "good", WORKS)
    write_extension(user, "raises", """
        from webui.extensions.api import Setting
        def setup(ext):
            ext.add_setting(Setting(key="half", default=1, label="Half"))
            raise RuntimeError("broken on purpose")
    """)
    write_extension(user, "badimport", "import no_such_module_here\n")
    write_extension(user, "future", WORKS, api=">=2.0,<3")
    (user / "a1111-style" / "scripts").mkdir(parents=True)
    (user / "a1111-style" / "scripts" / "thing.py").write_text("import modules.shared\n")
    with caplog.at_level(logging.INFO, logger="webui.extensions.loader"):
        host = load(tmp_path)
    status = {r.name: r.status for r in host.records}
    assert status == {"good": LOADED, "raises": FAILED, "badimport": FAILED, "future": INCOMPATIBLE,
                      "a1111-style": INCOMPATIBLE}
    raises = host.record("raises")
    assert raises.error == "RuntimeError: broken on purpose"
    assert "broken on purpose" in raises.traceback and "main.py" in raises.traceback
    assert raises.extension is None  # the setting it added before raising is not kept
    assert host.settings() == [("good", host.record("good").extension.settings[0])]
    assert "ModuleNotFoundError" in host.record("badimport").error
    assert "needs extension API >=2.0,<3" in host.record("future").error
    assert "no extension.toml" in host.record("a1111-style").error
    assert host.record("good").load_seconds > 0
    log = caplog.text
    assert "Extension good: loaded" in log and "broken on purpose" in log and "Traceback" in log


def test_hung_import_is_skipped_after_the_limit(tmp_path):
    user = tmp_path / "user"
    write_extension(user, "hangs", """
        import threading
        threading.Event().wait(30)
        def setup(ext):
            pass
    """)
    write_extension(user, "later", WORKS)
    host = load(tmp_path, import_seconds=0.5)
    hung = host.record("hangs")
    assert hung.status == FAILED
    assert "did not finish importing in 0.5 s" in hung.error and "cannot be stopped" in hung.error
    assert "main.py" in hung.traceback and "wait(30)" in hung.traceback  # where it hangs, for its author
    assert host.record("later").status == LOADED
    assert [e.name for e in host.loaded()] == ["later"]


def test_hung_setup_is_skipped_too(tmp_path):
    write_extension(tmp_path / "user", "slowsetup", """
        import threading
        def setup(ext):
            threading.Event().wait(30)
    """)
    assert load(tmp_path, import_seconds=0.3).record("slowsetup").status == FAILED


@pytest.mark.parametrize("code", ["import sys\nsys.exit(3)\n", "raise KeyboardInterrupt\n",
                                  "def setup(ext):\n    raise SystemExit('bye')\n"])
def test_exit_at_import_or_setup_does_not_stop_the_app(tmp_path, code):
    write_extension(tmp_path / "user", "quitter", code)
    write_extension(tmp_path / "user", "survivor", WORKS)
    host = load(tmp_path)  # returning at all is the point: SystemExit would end pytest here
    assert host.record("quitter").status == FAILED
    assert host.record("survivor").status == LOADED


def test_sys_exit_is_named_in_the_error(tmp_path):
    write_extension(tmp_path / "user", "quitter", "import sys\nsys.exit(3)\n")
    assert "sys.exit(3)" in load(tmp_path).record("quitter").error


def test_duplicate_names_are_refused_and_builtins_come_first(tmp_path):
    write_extension(tmp_path / "builtin", "same", WORKS)
    user = tmp_path / "user"
    folder = write_extension(user, "other-folder", WORKS)
    (folder / "extension.toml").write_text('name = "same"\nversion = "0.1.0"\napi = ">=1.0"\n')
    host = load(tmp_path)
    first, second = host.records
    assert first.builtin and first.status == LOADED
    assert second.status == FAILED and "another extension named 'same'" in second.error


def test_safe_mode_skips_user_extensions_and_says_how_many(tmp_path, caplog):
    write_extension(tmp_path / "builtin", "core-one", WORKS)
    write_extension(tmp_path / "user", "mine", WORKS)
    write_extension(tmp_path / "user", "yours", WORKS)
    with caplog.at_level(logging.INFO, logger="webui.extensions.loader"):
        host = load(tmp_path, safe_mode=True)
    assert [e.name for e in host.loaded()] == ["core-one"]
    assert host.record("mine").status == DISABLED
    assert "2 user extension(s) skipped" in caplog.text


def test_relative_import_of_its_own_submodule(tmp_path):
    write_extension(tmp_path / "user", "pkg-ext", """
        from .helpers.words import WORD
        from webui.extensions.api import Setting
        def setup(ext):
            ext.add_setting(Setting(key="word", default=WORD, label="Word"))
    """, files={"helpers/__init__.py": "", "helpers/words.py": "WORD = 'from a submodule'\n"})
    host = load(tmp_path)
    assert host.record("pkg-ext").status == LOADED, host.record("pkg-ext").traceback
    assert host.settings()[0][1].default == "from a submodule"


def _pickle_checkpoint(tmp_path):
    """A .pt whose unpickling would call os.mkdir: the kind of file weights-only loading refuses."""
    from webui.extensions.policies import _Hostile
    import pickle

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(_Hostile(str(marker)), protocol=2))
    return path, marker


def test_extension_setting_the_torch_env_switch_is_failed_and_undone(tmp_path, caplog):
    write_extension(tmp_path / "user", "envsetter", """
        import os
        os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
        def setup(ext):
            pass
    """)
    write_extension(tmp_path / "user", "zz-fine", WORKS)
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
    host = load(tmp_path)
    record = host.record("envsetter")
    assert record.status == FAILED and record.extension is None
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" in record.error and "pickle policy" in record.error
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
    assert host.record("zz-fine").status == LOADED


def test_extension_replacing_torch_load_is_failed_and_pickles_stay_refused(tmp_path):
    original = torch.load
    write_extension(tmp_path / "user", "unsafe-loader", """
        import functools
        import torch
        _real = torch.load
        @functools.wraps(_real)
        def load(*args, **kwargs):
            kwargs["weights_only"] = False
            return _real(*args, **kwargs)
        torch.load = load
        torch.serialization.load = load
        def setup(ext):
            pass
    """)
    try:
        host = load(tmp_path)
    finally:
        replaced = torch.load is not original
        torch.load = torch.serialization.load = original  # never leak into other tests, whatever happened
    assert not replaced
    record = host.record("unsafe-loader")
    assert record.status == FAILED and "replaced torch.load" in record.error
    # The core's checkpoint loader still refuses the pickle without running it.
    from webui.models.loader import _load_pickle

    path, marker = _pickle_checkpoint(tmp_path)
    with pytest.raises(ModelLoadError):
        _load_pickle(path)
    assert not marker.exists()


def test_the_probe_notices_a_broken_policy(tmp_path):
    from webui.extensions.policies import PolicyError, PolicyGuard

    guard = PolicyGuard.capture()
    original = torch.load
    torch.load = lambda *a, **k: original(*a, **{**k, "weights_only": False})
    try:
        with pytest.raises(PolicyError, match="--safe-mode"):
            guard.probe()
    finally:
        torch.load = original
    guard.probe()  # restored: no error


def test_services_start_in_safe_mode_with_user_extensions_off(tmp_path):
    from tests.conftest import make_settings
    from webui.services.container import build_services

    data_dir = tmp_path / "data"
    write_extension(data_dir / "extensions", "mine", WORKS)
    write_extension(data_dir / "extensions", "quitter", "import sys\nsys.exit(1)\n")
    normal = build_services(make_settings(data_dir))
    try:
        assert normal.extensions.record("mine").status == LOADED
        assert normal.extensions.record("quitter").status == FAILED
    finally:
        normal.queue.shutdown()
    safe = build_services(make_settings(data_dir, safe_mode=True))
    try:
        assert {r.name: r.status for r in safe.extensions.records if not r.builtin} == {"mine": DISABLED,
                                                                                        "quitter": DISABLED}
    finally:
        safe.queue.shutdown()
