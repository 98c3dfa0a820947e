"""UniPC: a predictor-corrector multistep solver that corrects every step with the model call the next step needs
anyway (Zhao, Bai, Rao, Zhou & Lu 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models"). Here in its "bh2" form of order 2, with the clean-image prediction, as diffusers'
UniPCMultistepScheduler runs it by default.

Notation is DPM-Solver's (see dpm_solver.py): x_t = alpha_t x_0 + sigma_t eps, lambda_t = log(alpha_t / sigma_t),
m_i = x_theta(x_i) the clean-image prediction at step i, h = lambda_i - lambda_{i-1} a step's length.

A step of UniPC, at step i with the prediction m_i just computed at x_i:

1. Correct (UniC-p, the paper's corrector; Theorem 3.1: order p + 1). x_i came from x_{i-1} by a step that used
   predictions up to m_{i-1}. Now that m_i is known, redo that step with it too. For p = 1 it is the trapezoidal
   rule, x_theta taken as the mean of its values at both ends:

       x_i^c = (sigma_i / sigma_{i-1}) x_{i-1}^c - alpha_i (e^-h - 1) (m_{i-1} + (m_i - m_{i-1}) / 2)

   For p = 2 the earlier prediction m_{i-2} joins in. With r_k the distance of each prediction from m_{i-1} in
   units of h (r = (lambda_{i-2} - lambda_{i-1}) / h for m_{i-2}, r = 1 for m_i), the correction is

       x_i^c = (sigma_i / sigma_{i-1}) x_{i-1}^c
               - alpha_i B(h) (m_{i-1} + rho_1 (m_{i-2} - m_{i-1}) / r + rho_2 (m_i - m_{i-1}))

   where (rho_1, rho_2) solve the order conditions R (rho_1, rho_2) = b: the rows of R are r_k^0 and r_k^1, and
   b_k = k! h phi_{k+1}(h) / B(h) (with phi_1(h) = (e^h - 1) / h, phi_{k+1}(h) = (phi_k(h) - 1 / k!) / h, taken at
   -h for the clean-image prediction). B(h) is the paper's free factor; "bh2" is B(h) = e^h - 1, which is also
   the first-order term's factor, hence the single bracket above. The corrector costs no UNet call: m_i is the
   prediction the next step needs anyway. It replaces x_i: the latents passed in reach the result only through m_i
   (so anything done to them between steps, like inpainting's re-imposition, is partly undone).

2. Predict (UniP-p, Corollary 3.2: order p). From x_i^c to x_{i+1} by a multistep step through m_i and m_{i-1}.
   With B(h) = e^h - 1 and its coefficient at its small-step limit 1/2 (as the authors' code and diffusers do for
   p = 2), UniP-2 is exactly DPM-Solver++(2M)'s update: this class inherits it.

The order ramps up and down as DPM-Solver++'s does: the first step predicts with p = 1 and is not corrected; the
second step's corrector is UniC-1; the last step predicts with p = 1 and lands on sigma = 0, returning m_i.

Timesteps, sigmas (and the `use_karras_sigmas` option), add_noise and the per-image history are DPM-Solver++'s
(diffusers' UniPC scheduler computes them identically); this sampler also remembers x_{i-1}^c.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sdviz.samplers.base import SamplerOutput
from sdviz.samplers.dpm_solver import DPMSolverPP2MSampler


class UniPCSampler(DPMSolverPP2MSampler):
    """UniPC-2, bh2, data prediction: DPM-Solver++(2M) steps, each corrected by UniC first. Deterministic, multistep.
    Option: `use_karras_sigmas` (default False)."""

    name = "unipc"

    def _reset(self) -> None:
        super()._reset()
        self._last_sample: Tensor | None = None  # x_{i-1}^c, where the previous step started (B, 4, h, w)

    def step(
        self,
        model_output: Tensor,
        t: int,
        latents: Tensor,
        noise: Tensor | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> SamplerOutput:
        """Correct x_i with m_i (UniC), then predict x_{i+1} from the corrected x_i (UniP)."""
        i = self._next_position(t)
        x = latents.float()  # (B, 4, h, w)
        x0 = self.predict_x0(model_output.float(), t, x)  # m_i = x_theta(x_i)
        if i > 0:  # a previous step to redo
            x = self._corrected(x0, i)  # UniC
        self._last_sample = x
        x_next = self._multistep_update(x, x0, i)  # UniP-2 with B(h) = e^h - 1 = DPM-Solver++(2M)
        self._remember(x0)
        return SamplerOutput(x_next.to(latents.dtype), x0.to(latents.dtype))

    def _corrected(self, x0: Tensor, i: int) -> Tensor:
        """UniC-p: x at position i recomputed from x_{i-1}^c with m_i known too (p = 1 on the second step, else 2)."""
        _, sigma_s, lambda_s = self.alpha_sigma_lambda(self.sigmas[i - 1])
        alpha_t, sigma_t, lambda_t = self.alpha_sigma_lambda(self.sigmas[i])
        h = lambda_t - lambda_s  # the length of the step being corrected
        hh = -h  # the clean-image prediction's integral runs over e^-lambda: its phi functions are taken at -h
        B = torch.expm1(hh)  # B(h) = e^h - 1 ("bh2")
        m_prev = self._x0_history[-1]  # m_{i-1}

        if len(self._x0_history) == 1:  # UniC-1: the trapezoidal rule, rho = 1/2
            correction = 0.5 * (x0 - m_prev)
        else:  # UniC-2: solve R (rho_1, rho_2) = b for the weights of m_{i-2} and m_i
            lambda_prev = self.alpha_sigma_lambda(self.sigmas[i - 2])[2]
            r = (lambda_prev - lambda_s) / h  # where m_{i-2} lies, in units of h (negative: behind)
            h_phi_2 = torch.expm1(hh) / hh - 1  # h phi_2(h)
            h_phi_3 = h_phi_2 / hh - 1 / 2  # h phi_3(h) = phi_2(h) - 1/2!
            b1, b2 = h_phi_2 * 1 / B, h_phi_3 * 2 / B  # b_k = k! h phi_{k+1}(h) / B(h)
            # R = [[1, 1], [r, 1]] (rows r_k^0, r_k^1 for r_k = (r, 1)); its solution in closed form:
            rho_1, rho_2 = (b1 - b2) / (1 - r), (b2 - r * b1) / (1 - r)
            correction = rho_1 * ((self._x0_history[-2] - m_prev) / r) + rho_2 * (x0 - m_prev)
        # x_i^c = (sigma_i / sigma_{i-1}) x_{i-1}^c - alpha_i B(h) (m_{i-1} + correction)  (UniC, Theorem 3.1)
        x_first_order = (sigma_t / sigma_s) * self._last_sample - alpha_t * B * m_prev  # DPM-Solver++(1) from x_{i-1}^c
        return x_first_order - alpha_t * B * correction
