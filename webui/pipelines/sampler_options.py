"""A1111's "Sampler parameters" options of a request, as webui/k_samplers.py's samplers take them.

Which sampler takes which option, and when the infotext records it, is declared with the request fields in
webui/parameters.py; this module only converts (e.g. A1111's ``s_tmax`` 0 means no upper bound).
"""

from __future__ import annotations

from webui.k_samplers import SamplerOptions
from webui.parameters import effective_eta
from webui.schedules import ScheduleOptions
from webui.types import Txt2ImgRequest


def from_request(request: Txt2ImgRequest) -> SamplerOptions:
    return SamplerOptions(
        eta=effective_eta(request),
        s_churn=request.s_churn,
        s_tmin=request.s_tmin,
        s_tmax=request.s_tmax or float("inf"),  # 0 = infinity, as A1111
        s_noise=request.s_noise,
        schedule=ScheduleOptions(sigma_min=request.sigma_min, sigma_max=request.sigma_max, rho=request.rho,
                                 beta_alpha=request.beta_dist_alpha, beta_beta=request.beta_dist_beta),
        always_discard_penultimate_sigma=request.always_discard_next_to_last_sigma,
        sgm_noise_multiplier=request.sgm_noise_multiplier,
    )
