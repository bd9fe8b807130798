"""Flow-matching sampling over a velocity callable: schedules, ODE solvers, three-branch CFG.

Never imports ``engine.model``: the model side hands in ``velocity(x, t[, branches])``.
"""
from engine.flow_time import sample_training_timesteps, shift_timesteps, unshift_timesteps
from engine.sampling.guidance import (
                                      BRANCHES,
                                      COND,
                                      NO_IMAGE,
                                      NO_TEXT,
                                      RENORM_MODES,
                                      GuidanceConfig,
                                      combine_guidance,
                                      guided_velocity,
)
from engine.sampling.sampler import draw_noise, sample
from engine.sampling.schedule import inference_timesteps, interpolate, predict_x0, velocity_target
from engine.sampling.solvers import SOLVERS, euler, get_solver, heun, midpoint, network_calls

__all__ = [
    "BRANCHES", "COND", "NO_IMAGE", "NO_TEXT", "RENORM_MODES", "SOLVERS", "GuidanceConfig", "combine_guidance",
    "draw_noise", "euler", "get_solver", "guided_velocity", "heun", "inference_timesteps", "interpolate",
    "midpoint", "network_calls", "predict_x0", "sample", "sample_training_timesteps", "shift_timesteps",
    "unshift_timesteps", "velocity_target",
]
