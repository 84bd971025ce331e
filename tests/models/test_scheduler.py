"""The EDM Euler schedule against the sigma table (docs/inference.md#sigma-table) and against diffusers' own scheduler."""

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from ort3d.models.scheduler import EDMEulerSchedule, ScheduleConfig, ScheduleConfigError

# SVD img2vid scheduler/scheduler_config.json (docs/inference.md#scheduler).
SVD_SCHEDULER_CONFIG = dict(
    _class_name="EulerDiscreteScheduler", beta_schedule="scaled_linear", beta_start=0.00085,
    beta_end=0.012, num_train_timesteps=1000, prediction_type="v_prediction",
    interpolation_type="linear", use_karras_sigmas=True, sigma_min=0.002, sigma_max=700.0,
    timestep_spacing="leading", timestep_type="continuous", steps_offset=1,
)

# docs/inference.md#sigma-table: sigma, t, c_in, c_skip, c_out, sigma_next for 25 steps.
APPENDIX_B = [
    (700.0, 1.6377700567245483, 0.0014285699, 2.04081221e-06, -0.999998927, 545.729248046875),
    (545.729248046875, 1.575530767440796, 0.00183240743, 3.35771711e-06, -0.999998331, 421.5691223144531),
    (421.5691223144531, 1.5109959840774536, 0.00237208349, 5.62678042e-06, -0.999997199, 322.45367431640625),
    (322.45367431640625, 1.443989872932434, 0.00310120569, 9.61747719e-06, -0.999995172, 244.0230712890625),
    (244.0230712890625, 1.3743157386779785, 0.004097939, 1.6793103e-05, -0.999991596, 182.54713439941406),
    (182.54713439941406, 1.3017520904541016, 0.0054779551, 3.00079901e-05, -0.999985039, 134.8544464111328),
    (134.8544464111328, 1.2260489463806152, 0.00741519872, 5.49851684e-05, -0.999972522, 98.26713562011719),
    (98.26713562011719, 1.1469224691390991, 0.0101758149, 0.000103547223, -0.999948204, 70.54084014892578),
    (70.54084014892578, 1.064047932624817, 0.0141747603, 0.000200923838, -0.999899507, 49.809791564941406),
    (49.809791564941406, 0.9770529270172119, 0.0200723298, 0.000402898382, -0.999798536, 34.536739349365234),
    (34.536739349365234, 0.8855059146881104, 0.028942544, 0.000837670814, -0.999581099, 23.467512130737305),
    (23.467512130737305, 0.7889042496681213, 0.0425734632, 0.00181250006, -0.999093294, 15.589967727661133),
    (15.589967727661133, 0.6866568922996521, 0.0640122667, 0.00409756973, -0.997949123, 10.097129821777344),
    (10.097129821777344, 0.5780627727508545, 0.0985558778, 0.00971326139, -0.995131493, 6.3542656898498535),
    (6.3542656898498535, 0.46228158473968506, 0.155461237, 0.0241681952, -0.987841964, 3.869697332382202),
    (3.869697332382202, 0.3382940888404846, 0.25019902, 0.0625995398, -0.968194485, 2.2691164016723633),
    (2.2691164016723633, 0.20484763383865356, 0.403275341, 0.162631005, -0.9150787, 1.2731772661209106),
    (1.2731772661209106, 0.06037889048457146, 0.61768651, 0.381536633, -0.786424458, 0.6781460046768188),
    (0.6781460046768188, -0.09709817171096802, 0.827639341, 0.68498683, -0.561260283, 0.33937814831733704),
    (0.33937814831733704, -0.27016007900238037, 0.946952045, 0.896718204, -0.321374834, 0.15740464627742767),
    (0.15740464627742767, -0.46223384141921997, 0.987837434, 0.975822806, -0.155490205, 0.06639907509088516),
    (0.06639907509088516, -0.6780180335044861, 0.997802913, 0.995610535, -0.0662531927, 0.02480258047580719),
    (0.02480258047580719, -0.9242019057273865, 0.999692559, 0.999385238, -0.0247949548, 0.007882495410740376),
    (0.007882495410740376, -1.2107776403427124, 0.999969006, 0.999937892, -0.0078822514, 0.0020000000949949026),
    (0.0020000000949949026, -1.553652048110962, 0.999997973, 0.999995947, -0.00199999614, 0.0),
]


def svd_schedule(steps=25):
    return EDMEulerSchedule.create(steps, ScheduleConfig.from_scheduler_config(SVD_SCHEDULER_CONFIG))


def diffusers_scheduler(steps=25):
    config = {k: v for k, v in SVD_SCHEDULER_CONFIG.items() if not k.startswith("_")}
    scheduler = EulerDiscreteScheduler(**config)
    scheduler.set_timesteps(steps)
    return scheduler


def test_table_matches_appendix_b():
    s = svd_schedule()
    table = torch.tensor(APPENDIX_B, dtype=torch.float64)
    # sigma and t are printed as exact float32 values: compare bit for bit.
    assert torch.equal(s.sigmas[:-1], table[:, 0].float())
    assert s.sigmas[-1].item() == 0.0 and s.sigmas.shape == (26,)
    assert torch.equal(s.timesteps, table[:, 1].float())
    assert torch.equal(s.sigma_next, table[:, 5].float())
    # c_* are printed to 9 significant digits (≈5e-9 relative) of float32 values (6e-8 ulp).
    for col, name in ((2, "c_in"), (3, "c_skip"), (4, "c_out")):
        torch.testing.assert_close(getattr(s, name).double(), table[:, col], rtol=1e-7, atol=0)
    assert s.init_noise_sigma.item() == 700.000732421875
    assert all(t.dtype == torch.float32 for t in (s.sigmas, s.timesteps, s.c_in, s.c_skip, s.c_out))


def test_table_matches_diffusers_scheduler():
    s, ref = svd_schedule(), diffusers_scheduler()
    assert torch.equal(s.sigmas, ref.sigmas)
    assert torch.equal(s.timesteps, ref.timesteps)
    assert torch.equal(s.init_noise_sigma, torch.as_tensor(ref.init_noise_sigma))


@pytest.mark.parametrize("steps", [25, 4])
def test_step_matches_diffusers_bitwise(steps):
    s, ref = svd_schedule(steps), diffusers_scheduler(steps)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 4, 6, 6, generator=gen) * s.init_noise_sigma
    x_ref = x.clone()
    for i in range(steps):
        t = ref.timesteps[i]
        assert torch.equal(s.scale_input(x, i), ref.scale_model_input(x_ref, t))
        v = torch.randn(x.shape, generator=gen)
        # the step index may be a device tensor (no host sync in the runtime)
        x, x0 = s.step(v, x, torch.tensor(i))
        x_ref, x0_ref = ref.step(v, t, x_ref, return_dict=False)
        assert torch.equal(x0, x0_ref) and torch.equal(x, x_ref), f"step {i}"


def test_last_step_lands_on_x0():
    s = svd_schedule()
    gen = torch.Generator().manual_seed(1)
    x, v = torch.randn(2, 4, 3, 3, generator=gen), torch.randn(2, 4, 3, 3, generator=gen)
    x_next, x0 = s.step(v, x, s.num_steps - 1)
    # sigma_next = 0: x_next = x + ((x - x0)/σ)·(0 - σ) is x0 up to a few float32 roundings of
    # values of size |x - x0|.
    atol = 4 * torch.finfo(torch.float32).eps * (x - x0).abs().max().item()
    torch.testing.assert_close(x_next, x0, rtol=0, atol=atol)
    torch.testing.assert_close(x0, s.c_out[-1] * v + s.c_skip[-1] * x, rtol=1e-6, atol=1e-6)


def test_step_keeps_model_dtype_and_upcasts_latents():
    s = svd_schedule()
    v = torch.ones(3, dtype=torch.float64)
    x_next, x0 = s.step(v, torch.ones(3, dtype=torch.float16), 0)
    assert x_next.dtype == torch.float64 and x0.dtype == torch.float64


@pytest.mark.parametrize("field,value", [
    ("prediction_type", "epsilon"), ("use_karras_sigmas", False), ("timestep_type", "discrete"),
    ("final_sigmas_type", "sigma_min"), ("sigma_min", None), ("timestep_spacing", "odd"),
    ("_class_name", "DDIMScheduler"),
])
def test_unsupported_config_names_the_field(field, value):
    with pytest.raises(ScheduleConfigError, match=field):
        ScheduleConfig.from_scheduler_config({**SVD_SCHEDULER_CONFIG, field: value})


def test_linspace_spacing_uses_sigma_max_as_initial_scale():
    cfg = ScheduleConfig.from_scheduler_config({**SVD_SCHEDULER_CONFIG, "timestep_spacing": "linspace"})
    assert EDMEulerSchedule.create(25, cfg).init_noise_sigma.item() == 700.0
