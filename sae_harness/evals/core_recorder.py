"""Core's per-token bookkeeping (CoreRecorder): what SAEBench's core computes per token, kept per
sequence for the standard errors, and the SAE-independent statistics of each batch (the layer's
activations; the clean and zero-ablated model's losses and next-token distributions), computed once
and served from the eval cache, so a run does one forward per reconstruction batch instead of three.

Shape suffixes: B sequences, T tokens, D model width, V vocabulary, C a chunk of positions, N rows."""

import numpy as np
import torch


def jackknife_se(sums_NM: np.ndarray, metric) -> float | None:
    """Delete-one jackknife standard error of metric(column totals) over the N rows (clusters,
    here sequences: tokens of one sequence are not independent)."""
    sums_NM = np.asarray(sums_NM, dtype=np.float64)
    n = len(sums_NM)
    if n < 2:
        return None
    loo_N = np.array([metric(row) for row in sums_NM.sum(0) - sums_NM])
    value = float(np.sqrt((n - 1) / n * ((loo_N - loo_N.mean()) ** 2).sum()))
    return value if np.isfinite(value) else None


class CoreRecorder:
    """What SAEBench's core computes per token, kept per sequence for the standard errors, and the
    SAE-independent layer activations of its sparsity / variance batches, served from the cache.
    model: stands in for the model in run_evals (its run_with_cache is the sparsity / variance pass);
    recons_loss: stands in for core.main.get_recons_loss."""

    def __init__(self, tl_model, sae, hook_name: str, ignore_tokens: set, cached: dict | None, keep: bool = True):
        from transformer_lens.utilities.activation_functions import softcap_enabled

        self.tl_model, self.sae, self.hook_name, self.ignore_tokens = tl_model, sae, hook_name, ignore_tokens
        self.keep = keep  # hold what the LLM gave, to be cached (gemma-2-2b's would not fit in memory)
        cached = cached or {}
        self.cached, self.calls, self.missed = cached.get("sparsity_variance"), [], 0
        self.cached_clean, self.clean, self.clean_missed = cached.get("reconstruction"), [], 0
        # the KL shortcut needs logits linear in the unembedding input: no soft-cap (Gemma 3 has none; Gemma 2 has one)
        self.shortcut = not softcap_enabled(tl_model.cfg.output_logits_soft_cap)
        self.recons_rows, self.variance_rows = [], []  # per sequence: sums of the per-token metrics, token count

    def _mask(self, tokens_BT):
        mask_BT = torch.ones_like(tokens_BT, dtype=torch.bool)
        for t in self.ignore_tokens:
            mask_BT &= tokens_BT != t
        return mask_BT

    @property
    def model(self):
        recorder = self

        class Model:
            def __getattr__(self, name):
                return getattr(recorder.tl_model, name)

            def __call__(self, *args, **kwargs):
                return recorder.tl_model(*args, **kwargs)

            def run_with_cache(self, tokens_BT, **kwargs):
                return recorder.run_with_cache(tokens_BT, **kwargs)

        return Model()

    def run_with_cache(self, tokens_BT, **kwargs):
        i = len(self.calls)
        if self.cached is not None and i < len(self.cached) and torch.equal(self.cached[i][0], tokens_BT.cpu()):
            acts_BTD = self.cached[i][1].to(tokens_BT.device)
        else:
            acts_BTD = self.tl_model.run_with_cache(tokens_BT, **kwargs)[1][self.hook_name]
            self.missed += 1
        self.calls.append((tokens_BT.cpu(), acts_BTD.detach().cpu()) if self.keep else None)
        with torch.no_grad():  # explained_variance_legacy per token, as SAEBench computes it per batch
            mask_BT = self._mask(tokens_BT)
            x_ND = acts_BTD[mask_BT].to(self.sae.device)
            x_hat_ND = self.sae.decode(self.sae.encode(x_ND)).to(x_ND.dtype)
            ev_N = 1 - (x_ND - x_hat_ND).pow(2).sum(-1) / (x_ND - x_ND.mean(0)).pow(2).sum(-1)
            seq_N = mask_BT.nonzero()[:, 0]
            for b in range(len(tokens_BT)):
                sel = seq_N == b
                self.variance_rows.append((ev_N[sel].double().sum().item(), int(sel.sum())))
        return None, {self.hook_name: acts_BTD}

    UNEMBED_ROWS = 512
    """Positions per chunk of vocabulary-wide logits: 512 x 262k floats (537 MB for Gemma 3), a whole
    default batch; three such tensors at once at most. On 2 AVX2 cores the product into them ran at
    99 GFLOPS in chunks of 128 positions, 121 in chunks of 512."""

    @property
    def layer(self) -> int:
        return int(self.hook_name.split(".")[1])  # blocks.<L>.hook_resid_post (EvalContext checks the form)

    def _embed(self, tokens_BT):
        """(residual after the embedding, TransformerLens's forward kwargs for the blocks: its own
        positional embedding and attention mask for these tokens)."""
        resid, _, pos_embed, attention_mask = self.tl_model.input_to_embed(tokens_BT)
        return resid, dict(tokens=tokens_BT, shortformer_pos_embed=pos_embed, attention_mask=attention_mask)

    def _blocks(self, resid_BTD, start: int, stop: int, kwargs: dict):
        """TransformerLens's forward from block `start` up to (not including) block `stop`."""
        return self.tl_model(resid_BTD, start_at_layer=start, stop_at_layer=stop, **kwargs)

    def _unembed_input(self, resid_BTD, kwargs: dict):
        """The unembedding's input (ln_final's output) from the residual after the hook's block,
        as TransformerLens's forward computes it."""
        model = self.tl_model
        resid = self._blocks(resid_BTD, self.layer + 1, model.cfg.n_layers, kwargs)
        return model.ln_final(resid) if model.cfg.normalization_type is not None else resid

    def _scratch(self, name: str, shape, like: torch.Tensor) -> torch.Tensor:
        """A buffer kept across batches (a fresh 537 MB tensor costs its page faults every time)."""
        buffers = self.__dict__.setdefault("_buffers", {})
        if name not in buffers or buffers[name].shape != torch.Size(shape):
            buffers[name] = like.new_empty(shape)
        return buffers[name]

    @property
    def W_UT(self) -> torch.Tensor:
        """W_U transposed, contiguous (V, D): the layout u = p W_U^T runs fastest in (made once)."""
        if getattr(self, "_W_UT", None) is None:
            self._W_UT = self.tl_model.W_U.T.contiguous()
        return self._W_UT

    def _logit_chunks(self, h_BTD, buffer: str = "z"):
        """(rows, logits) over chunks of UNEMBED_ROWS positions of the flattened (B * T) positions:
        z = h W_U + b_U, into the scratch buffer `buffer`, which the next chunk overwrites."""
        W_U, b_U = self.tl_model.W_U, self.tl_model.b_U
        h_ND = h_BTD.reshape(-1, h_BTD.shape[-1])
        for start in range(0, len(h_ND), self.UNEMBED_ROWS):
            rows = slice(start, start + self.UNEMBED_ROWS)
            h_CD = h_ND[rows]
            yield rows, torch.addmm(b_U, h_CD, W_U, out=self._scratch(buffer, (len(h_CD), W_U.shape[1]), h_CD))

    def _log_softmax_(self, z_CV: torch.Tensor, p_buffer: str = "p", normalized: bool = True):
        """(log softmax(z), softmax(z), logsumexp(z)) with no new (C, V) tensor: z becomes log p in
        place, p goes into a scratch buffer. Sums by torch.sum (cascade summation): 1e-6 nats from
        a float64 computation on the embedded model, where log_softmax's own was up to 1e-4 off.
        normalized False: only logsumexp(z) is meant (z holds z - max, the buffer exp of that)."""
        max_C1 = z_CV.amax(-1, keepdim=True)
        z_CV.sub_(max_C1)
        p_CV = torch.exp(z_CV, out=self._scratch(p_buffer, z_CV.shape, z_CV))
        sum_C1 = p_CV.sum(-1, keepdim=True)
        log_sum_C1 = sum_C1.log()
        if normalized:
            p_CV.div_(sum_C1)
            z_CV.sub_(log_sum_C1)
        return z_CV, p_CV, (max_C1 + log_sum_C1)[:, 0]

    @staticmethod
    def _next_tokens(tokens_BT) -> torch.Tensor:
        """The next token per flattened position (0 at a sequence's last position, which has none)."""
        return torch.cat([tokens_BT[:, 1:], torch.zeros_like(tokens_BT[:, :1])], 1).reshape(-1)

    def _ablated(self, resid_BTD, kwargs):
        """The zero-ablated model's unembedding input (SAEBench's zero-ablation hook), as (rows, D):
        one row when it is the same at every position (after zeroing Gemma's whole residual stream
        it stays zero: no biases), else every position's. Past the hook the input is zero for every
        sequence, so without a per-sequence attention mask one sequence stands for all."""
        one_for_all = kwargs["attention_mask"] is None and kwargs["shortformer_pos_embed"] is None
        zeros = torch.zeros_like(resid_BTD[:1] if one_for_all else resid_BTD)
        h = self._unembed_input(zeros, kwargs)
        h_ND = h.reshape(-1, h.shape[-1])
        if bool((h_ND == h_ND[:1]).all()):
            return h_ND[:1]
        return h.expand(len(resid_BTD), -1, -1).reshape(-1, h.shape[-1])

    @torch.no_grad()
    def clean_statistics(self, tokens_BT) -> dict:
        """What SAEBench's get_recons_loss computes without the SAE, per token (to float rounding):
        the clean and the zero-ablated model's losses and KL(clean || ablated); and of the clean
        next-token distribution p: sum p log p, u = W_U p and b_U . p, with which
        KL(p || softmax(z)) = sum p log p - (h . u + b_U . p - sum p * logsumexp(z)) for z = h W_U + b_U;
        and the residual after the hook's block (resid), from which a later run's forward with the
        SAE spliced in starts. The blocks up to the hook run once for the clean and the ablated
        model; the vocabulary-wide tensors are made in chunks of UNEMBED_ROWS positions, each
        passed over a few times (log p, p, two products and their sums)."""
        B, T = tokens_BT.shape
        resid_BTD, kwargs = self._embed(tokens_BT)
        resid_BTD = self._blocks(resid_BTD, 0, self.layer + 1, kwargs)
        h_p = self._unembed_input(resid_BTD, kwargs)
        next_N, N, D = self._next_tokens(tokens_BT), B * T, h_p.shape[-1]
        h_abl_RD = self._ablated(resid_BTD, kwargs)
        if len(h_abl_RD) == 1:  # one ablated distribution for every position
            (_, z_abl), *_ = self._logit_chunks(h_abl_RD, "z_abl")
            log_q_V = self._log_softmax_(z_abl, "q")[0][0].clone()
            ce_abl_N = -log_q_V[next_N]
        out = {name: h_p.new_empty(N) for name in ("ce_clean", "ce_abl", "kl_abl", "p_log_p", "p_sum", "b_dot_p")}
        out["u"] = h_p.new_empty(N, D)
        ablated = None if len(h_abl_RD) == 1 else self._logit_chunks(h_abl_RD, "z_abl")
        for rows, z_p in self._logit_chunks(h_p):
            log_p, p, _ = self._log_softmax_(z_p)
            out["ce_clean"][rows] = -log_p.gather(-1, next_N[rows, None])[:, 0]
            product = self._scratch("product", p.shape, p)
            # sums over the vocabulary by torch.sum (cascade summation), as SAEBench's: a BLAS dot
            # product over 262k float32 terms was measured off by up to 3e-3 nats per token
            out["p_log_p"][rows] = torch.mul(p, log_p, out=product).sum(-1)
            out["p_sum"][rows] = p.sum(-1)
            if ablated is None:
                out["ce_abl"][rows] = ce_abl_N[rows]
                log_q = log_q_V
            else:
                log_q = self._log_softmax_(next(ablated)[1], "q")[0]
                out["ce_abl"][rows] = -log_q.gather(-1, next_N[rows, None])[:, 0]
            out["kl_abl"][rows] = out["p_log_p"][rows] - torch.mul(p, log_q, out=product).sum(-1)
            out["u"][rows] = p @ self.W_UT
            out["b_dot_p"][rows] = p @ self.tl_model.b_U
        shaped = {name: value.view(B, T, *value.shape[1:]) for name, value in out.items()}
        for name in ("ce_clean", "ce_abl"):  # no next token at the last position
            shaped[name] = shaped[name][:, :-1]
        return dict(tokens=tokens_BT.cpu(), resid=resid_BTD.cpu()) | {name: value.cpu() for name, value in shaped.items()}

    @torch.no_grad()
    def shortcut_recons_loss(
        self,
        sae,
        model,
        batch_tokens,
        activation_store,
        compute_kl,
        compute_ce_loss,
        ignore_tokens=None,
        exclude_special_tokens_from_reconstruction=False,
        model_kwargs=None,
    ):
        """core.main.get_recons_loss with the SAE-independent parts from the cache: one forward with
        the SAE spliced in (SAEBench's replacement hook), from the cached residual at the hook,
        instead of three whole forwards; its logits in chunks. ce_loss_with_sae is SAEBench's own;
        kl_div_with_sae is the same KL by the identity in clean_statistics."""
        if model_kwargs:
            raise ValueError(f"the core shortcut runs the model without kwargs, got {sorted(model_kwargs)}")
        i = len(self.clean)
        if self.cached_clean is not None and i < len(self.cached_clean) and torch.equal(self.cached_clean[i]["tokens"], batch_tokens.cpu()):
            clean = self.cached_clean[i]
        else:
            clean = self.clean_statistics(batch_tokens)
            self.clean_missed += 1
        self.clean.append(clean if self.keep else None)
        mask = self._mask(batch_tokens) if exclude_special_tokens_from_reconstruction else torch.ones_like(batch_tokens, dtype=torch.bool)
        _, kwargs = self._embed(batch_tokens)
        if "resid" in clean:  # an entry without the residual (cache format of older runs): the blocks up to the hook run again
            activations = clean["resid"].to(batch_tokens.device)
        else:
            activations = self._blocks(self._embed(batch_tokens)[0], 0, self.layer + 1, kwargs)
        # core.main.get_recons_loss's standard_replacement_hook
        reconstructed = sae.decode(sae.encode(activations.to(sae.device))).to(activations.dtype)
        spliced = torch.where(mask[..., None], reconstructed, activations.to(sae.device)).to(activations.device)
        B, T = batch_tokens.shape
        h_q = self._unembed_input(spliced, kwargs)
        next_N = self._next_tokens(batch_tokens)
        ce_sae, lse = h_q.new_empty(B * T), h_q.new_empty(B * T)
        for rows, z_q in self._logit_chunks(h_q):
            z_next = z_q.gather(-1, next_N[rows, None])[:, 0]
            lse[rows] = self._log_softmax_(z_q, normalized=False)[2]
            ce_sae[rows] = lse[rows] - z_next
        dev = h_q.device
        p_log_q = (h_q * clean["u"].to(dev)).sum(-1) + clean["b_dot_p"].to(dev) - clean["p_sum"].to(dev) * lse.view(B, T)
        return {
            "kl_div_with_sae": clean["p_log_p"].to(dev) - p_log_q,
            "kl_div_with_ablation": clean["kl_abl"].to(dev),
            "ce_loss_with_sae": ce_sae.view(B, T)[:, :-1],
            "ce_loss_without_sae": clean["ce_clean"].to(dev),
            "ce_loss_with_ablation": clean["ce_abl"].to(dev),
        }

    def recons_loss(self, original):
        def call(sae, model, batch_tokens, *args, **kwargs):
            metrics = (self.shortcut_recons_loss if self.shortcut else original)(sae, model, batch_tokens, *args, **kwargs)
            mask_BT = self._mask(batch_tokens)
            for b in range(len(batch_tokens)):
                m, m_ce = mask_BT[b], mask_BT[b, :-1]
                row = [metrics[name][b][m].double().sum().item() for name in ("kl_div_with_sae", "kl_div_with_ablation")]
                row += [
                    metrics[name][b][m_ce].double().sum().item()
                    for name in ("ce_loss_with_sae", "ce_loss_without_sae", "ce_loss_with_ablation")
                ]
                self.recons_rows.append(row)
            return metrics

        return call

    def standard_errors(self) -> dict:
        out = {}
        if self.recons_rows:
            rows = np.array(self.recons_rows)  # kl_sae, kl_abl, ce_sae, ce_clean, ce_abl (sums; the counts cancel)
            out["kl_div_score"] = jackknife_se(rows, lambda t: (t[1] - t[0]) / t[1])
            out["ce_loss_score"] = jackknife_se(rows, lambda t: (t[4] - t[2]) / (t[4] - t[3]))
        if self.variance_rows:
            out["explained_variance"] = jackknife_se(np.array(self.variance_rows), lambda t: t[0] / t[1])
        return out
