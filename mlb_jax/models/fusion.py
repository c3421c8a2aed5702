"""Fusion heads f_v: {modality: features [B, D_i]} -> fused logits [B, C].

Each head takes the modalities in config order. A head whose logits are a sum
of per-modality terms also has `contributions(features) -> {m: [B, C]}`
(OGM and MSLR score those terms, docs/methods.md, OGM and MSLR).

The paper's heads (docs/methods.md, fusion heads): Late-Linear, Mid-MLP, FiLM, Gated and the
Transformer fusion, which reads the encoders' un-pooled token sequences
(`uses_tokens = True`); MMCosine belongs to its balancing method (docs/methods.md, MMCosine),
MMTM to Greedy's (docs/methods.md, Greedy). A head with `uses_train = True` (MMTM, which
keeps running gate means in `batch_stats`) also receives `train` in `contributions`.

Every head computes in its `dtype` (`config.dtype`) with float32 parameters;
`MultimodalClassifier` casts the logits to float32.
"""

from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlb_jax.models import conformer


def _torch_linear_init(fan_in: int):
  """PyTorch's default Linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / jnp.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _torch_sliced_init(fan_ins: Sequence[int]):
  """Rows in blocks of `fan_ins`, block i drawn from U(+-1/sqrt(fan_ins[i])): one PyTorch Linear per
  modality slice (the authors' `fc_i_lin` layers), as one kernel over the concatenated features."""
  def init(key, shape, dtype=jnp.float32):
    keys = jax.random.split(key, len(fan_ins))
    blocks = [jax.random.uniform(k, (d, *shape[1:]), dtype, -1.0 / jnp.sqrt(d), 1.0 / jnp.sqrt(d))
              for k, d in zip(keys, fan_ins)]
    return jnp.concatenate(blocks, axis=0)
  return init


class TorchDense(nn.Module):
  """Linear(D -> features) with PyTorch's default init, U(+-1/sqrt(D)) for kernel and bias, D read from
  the input; the parameters are named as `nn.Dense`'s ('kernel' [D, features], 'bias')."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    init = _torch_linear_init(x.shape[-1])
    kernel = self.param('kernel', init, (x.shape[-1], self.features)).astype(self.dtype)
    bias = self.param('bias', init, (self.features,)).astype(self.dtype)
    return x.astype(self.dtype) @ kernel + bias


class LateLinearFusion(nn.Module):
  """Late-Linear: one linear layer over the concatenated features.

  z = sum_m f_m W_m + b, which equals the authors' `fc_0_lin` + `fc_1_lin`
  (docs/methods.md, fusion heads). The modality contributions split the bias evenly,
  z_m = f_m W_m + b / M, as the authors' OGM code does (b/2 for M = 2).

  Attributes: modalities: concatenation order; num_classes: C; dtype: compute dtype;
    sliced_init: initialise as the authors' one Linear per modality (W_m ~ U(+-1/sqrt(D_m)), b with the
    first modality's fan-in) instead of one Linear over the concatenation (U(+-1/sqrt(sum D))).
  """
  modalities: Sequence[str]
  num_classes: int
  dtype: Any = jnp.float32
  sliced_init: bool = False

  @nn.compact
  def contributions(self, features: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    dims = [features[m].shape[-1] for m in self.modalities]
    init = _torch_linear_init(dims[0] if self.sliced_init else sum(dims))
    kernel_init = _torch_sliced_init(dims) if self.sliced_init else init
    kernel = self.param('kernel', kernel_init, (sum(dims), self.num_classes)).astype(self.dtype)
    bias = self.param('bias', init, (self.num_classes,)).astype(self.dtype)
    out, start = {}, 0
    for m, d in zip(self.modalities, dims):
      out[m] = features[m].astype(self.dtype) @ kernel[start:start + d] + bias / len(self.modalities)
      start += d
    return out

  def __call__(self, features: Mapping[str, jax.Array], *, train: bool):
    del train
    return sum(self.contributions(features).values())


class MidMLPFusion(nn.Module):
  """Concatenate, then Linear -> ReLU -> Dropout -> Linear -> ReLU -> Dropout -> Linear
  (the authors' Mid-MLP, `fc_inner` 64, dropout 0.1: three affine maps).

  Attributes: modalities; num_classes; hidden: inner width; dropout: rate; dtype: compute dtype;
    torch_init: PyTorch's default Linear init for the three layers, the first one per modality slice
    (the authors' `fc_i_lin`); default Flax's (LeCun-normal kernels, zero biases).
  """
  modalities: Sequence[str]
  num_classes: int
  hidden: int = 64
  dropout: float = 0.1
  dtype: Any = jnp.float32
  torch_init: bool = False

  @nn.compact
  def __call__(self, features: Mapping[str, jax.Array], *, train: bool):
    dims = [features[m].shape[-1] for m in self.modalities]
    x = jnp.concatenate([features[m] for m in self.modalities], axis=-1)
    drop = lambda h: nn.Dropout(self.dropout, deterministic=not train)(nn.relu(h))
    if self.torch_init:
      first = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=_torch_sliced_init(dims),
                       bias_init=_torch_linear_init(dims[0]), name='Dense_0')
      second = _torch_dense(self.hidden, self.hidden, 'Dense_1', self.dtype)
      last = _torch_dense(self.num_classes, self.hidden, 'Dense_2', self.dtype)
    else:
      first, second, last = (nn.Dense(w, dtype=self.dtype, name=f'Dense_{i}')
                             for i, w in enumerate((self.hidden, self.hidden, self.num_classes)))
    x = drop(first(x))
    x = drop(second(x))
    return last(x)


class MMCosineFusion(nn.Module):
  """MMCosine (Xu et al., ICASSP 2023; docs/methods.md, MMCosine): per-modality cosine logits.

  z[c] = s * sum_m cos(f_m, W_m[c]), with each feature vector and each class
  weight row L2-normalised and no bias.

  Attributes: modalities; num_classes; scale: s (the authors use 10); dtype:
  compute dtype of the cosine products (the norms are taken in float32).
  """
  modalities: Sequence[str]
  num_classes: int
  scale: float = 10.0
  dtype: Any = jnp.float32

  @nn.compact
  def contributions(self, features: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    out = {}
    for m in self.modalities:
      f = features[m].astype(jnp.float32)
      w = self.param(f'kernel_{m}', _torch_linear_init(f.shape[-1]), (f.shape[-1], self.num_classes))
      f_unit = f * jax.lax.rsqrt(jnp.sum(f * f, axis=-1, keepdims=True) + 1e-12)
      w_unit = w * jax.lax.rsqrt(jnp.sum(w * w, axis=0, keepdims=True) + 1e-12)
      out[m] = self.scale * (f_unit.astype(self.dtype) @ w_unit.astype(self.dtype))
    return out

  def __call__(self, features: Mapping[str, jax.Array], *, train: bool):
    del train
    return sum(self.contributions(features).values())


def _split_condition(modalities: Sequence[str], features: Mapping[str, jax.Array], name: str):
  """(first modality's features, the others' concatenated): the conditioning and
  the conditioned input of FiLM and Gated fusion."""
  if len(modalities) < 2:
    raise ValueError(f'{name} fusion needs at least 2 modalities, got {list(modalities)}')
  rest = jnp.concatenate([features[m] for m in modalities[1:]], axis=-1)
  return features[modalities[0]], rest


def _torch_dense(features: int, fan_in: int, name: str, dtype=jnp.float32) -> nn.Dense:
  init = _torch_linear_init(fan_in)
  return nn.Dense(features, kernel_init=init, bias_init=init, dtype=dtype, name=name)


class FiLMFusion(nn.Module):
  """FiLM (Perez et al., 2018) as the authors' `FiLM(512, 512, C)` (docs/methods.md, fusion heads).

  The first modality conditions the others: [gamma, beta] = Linear(f_1) (width
  2D), z = Linear(gamma * f_rest + beta), where f_rest is the second modality
  (M = 2, the authors' audio-conditions-video) or the concatenation of all
  modalities after the first (M > 2). PyTorch's default Linear init.

  Attributes: modalities (the first conditions); num_classes; dtype: compute dtype.
  """
  modalities: Sequence[str]
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Mapping[str, jax.Array], *, train: bool):
    del train
    cond, rest = _split_condition(self.modalities, features, 'FiLM')
    d = rest.shape[-1]
    gamma, beta = jnp.split(_torch_dense(2 * d, cond.shape[-1], 'film', self.dtype)(cond), 2, axis=-1)
    return _torch_dense(self.num_classes, d, 'out', self.dtype)(gamma * rest.astype(self.dtype) + beta)


class GatedFusion(nn.Module):
  """Gated fusion as the authors' `GatedFusion(512, 512, C)` (docs/methods.md, fusion heads).

  z = Linear(sigmoid(Linear(f_1)) * Linear(f_rest)): the first modality gates
  the second (M = 2) or the concatenation of the others (M > 2); the gate and
  value projections have the width of f_rest (512 for two ResNet-18s).

  Attributes: modalities (the first gates); num_classes; dtype: compute dtype.
  """
  modalities: Sequence[str]
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Mapping[str, jax.Array], *, train: bool):
    del train
    gate_in, rest = _split_condition(self.modalities, features, 'Gated')
    d = rest.shape[-1]
    gate = jax.nn.sigmoid(_torch_dense(d, gate_in.shape[-1], 'gate', self.dtype)(gate_in))
    value = _torch_dense(d, d, 'value', self.dtype)(rest)
    return _torch_dense(self.num_classes, d, 'out', self.dtype)(gate * value)


def running_mean(mean: jax.Array, count: jax.Array, batch_mean: jax.Array) -> jax.Array:
  """The cumulative mean after one more forward pass: (batch_mean + count * mean) / (count + 1)."""
  count = count.astype(jnp.float32)
  return (batch_mean.astype(jnp.float32) + count * mean) / (count + 1.0)


class MMTMFusion(nn.Module):
  """MMTM (Joze et al., CVPR 2020) as Greedy's balanced block (Wu et al., ICML 2022;
  docs/methods.md, Greedy), on the pooled features, then one linear classifier per modality.

      s   = relu(Linear(concat_m f_m))            (width int(2 sum_m D_m / ratio))
      g_m = sigmoid(Linear_m(s))                  (width D_m; 'excite_<m>')
      x_m = Linear_m(f_m * g_m)                   ('classifier_<m>', D_m -> C)
      z   = (1/M) sum_m x_m                       contributions z_m = x_m / M

  The fused logits are the mean of the per-modality classifiers, as Greedy's
  `(x_0 + x_1) / 2`. One block on the pooled features: the original places one
  after ResNet stages 2-4 (BalanceBenchmark: 1-4), squeezing the feature maps by
  their spatial mean, which needs a joint encoder; ours are independent modules.

  Running-mean gates: `batch_stats` holds, per modality, the cumulative mean of
  the batch-mean gate over the train-mode forward passes so far ('gate_mean_<m>')
  and their count ('gate_count'). It is updated when `train` is True and the
  collection is mutable (the train step's forward; a re-fusion inside a loss leaves
  it), the current batch included before it is used, as the original; the original
  also updates it during evaluation forwards.

  `curate` (float or bool [M], None: none): where curate[m] is set, modality m's gate
  is replaced by its running mean for every sample (`jnp.where`, so one compiled
  step serves curation on and off).

  Attributes: modalities; num_classes; ratio: squeeze reduction (the original: 4);
  dtype: compute dtype (the running means are float32).
  """
  modalities: Sequence[str]
  num_classes: int
  ratio: int = 4
  dtype: Any = jnp.float32

  uses_train = True  # MultimodalClassifier also passes `train` to `contributions`

  @nn.compact
  def contributions(self, features: Mapping[str, jax.Array], *, train: bool = False,
                    curate: Optional[jax.Array] = None) -> dict[str, jax.Array]:
    feats = [features[m].astype(self.dtype) for m in self.modalities]
    dims = [f.shape[-1] for f in feats]
    total = sum(dims)
    hidden = int(2 * total / self.ratio)
    if hidden < 1:
      raise ValueError(f'model.mmtm.ratio {self.ratio} leaves no squeeze unit for {total} features '
                       f'(int(2 * {total} / ratio) = {hidden})')
    squeeze = nn.relu(_torch_dense(hidden, total, 'squeeze', self.dtype)(jnp.concatenate(feats, axis=-1)))
    count = self.variable('batch_stats', 'gate_count', lambda: jnp.zeros((), jnp.int32))
    update = train and self.is_mutable_collection('batch_stats') and not self.is_initializing()
    out = {}
    for i, (m, f, d) in enumerate(zip(self.modalities, feats, dims)):
      gate = jax.nn.sigmoid(_torch_dense(d, hidden, f'excite_{m}', self.dtype)(squeeze))
      mean = self.variable('batch_stats', f'gate_mean_{m}', lambda d=d: jnp.zeros((d,), jnp.float32))
      if update:
        mean.value = running_mean(mean.value, count.value, jnp.mean(jax.lax.stop_gradient(gate), axis=0))
      if curate is not None:
        replace = jnp.asarray(curate)[i].astype(bool)
        gate = jnp.where(replace, jnp.broadcast_to(mean.value.astype(gate.dtype), gate.shape), gate)
      out[m] = _torch_dense(self.num_classes, d, f'classifier_{m}', self.dtype)(f * gate) / len(self.modalities)
    if update:
      count.value = count.value + 1
    return out

  def __call__(self, features: Mapping[str, jax.Array], *, train: bool, curate: Optional[jax.Array] = None):
    return sum(self.contributions(features, train=train, curate=curate).values())


class TransformerFusion(nn.Module):
  """The authors' `TF_Fusion` (docs/methods.md, fusion heads): a 2-layer Conformer over
  [CLS, tokens of modality 1, ..., tokens of modality M], logits from CLS.

  Each modality's token sequence (the encoder's un-pooled output, e.g. the 54
  audio and 3 x 49 video ResNet positions on CREMA-D) gets its learned modality
  token added (randn init, as the reference), then a linear projection to
  `dim`. The reference projects the concatenated tokens with one shared
  Linear(512 -> 512); a projection per modality is that map with untied
  weights and lets modalities of different widths share the fusion. The
  learned CLS token (randn) is prepended, positions padded in a modality's
  `token_masks` entry are masked out of the attention.

  Call: `fusion(features, train=..., tokens={m: [B, N_m, D_m]},
  token_masks={m: bool [B, N_m]} (optional))`; `features` (pooled) are unused.

  Attributes: modalities; num_classes; dim; layers; heads; ff_mult; kernel; dropout;
  dtype: compute dtype.
  """
  modalities: Sequence[str]
  num_classes: int
  dim: int = 512
  layers: int = 2
  heads: int = 8
  ff_mult: int = 4
  kernel: int = 31
  dropout: float = 0.1
  dtype: Any = jnp.float32

  uses_tokens = True  # MultimodalClassifier passes the encoders' token sequences

  @nn.compact
  def __call__(self, features: Mapping[str, jax.Array], *, train: bool,
               tokens: Optional[Mapping[str, jax.Array]] = None,
               token_masks: Optional[Mapping[str, jax.Array]] = None):
    del features
    if tokens is None or set(self.modalities) - set(tokens):
      raise ValueError('TransformerFusion needs the token sequences of every modality '
                       f'{list(self.modalities)}, got {None if tokens is None else sorted(tokens)}')
    token_masks = token_masks or {}
    seqs, masks = [], []
    for m in self.modalities:
      t = tokens[m].astype(jnp.float32)
      mod_token = self.param(f'token_{m}', nn.initializers.normal(1.0), (t.shape[-1],))
      seqs.append(conformer.xavier_dense(self.dim, name=f'proj_{m}', dtype=self.dtype)(t + mod_token))
      mask = token_masks.get(m)
      masks.append(jnp.ones(t.shape[:2], bool) if mask is None else mask.astype(bool))
    b = seqs[0].shape[0]
    cls = self.param('cls_token', nn.initializers.normal(1.0), (self.dim,)).astype(self.dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.dim))] + seqs, axis=1)
    mask = jnp.concatenate([jnp.ones((b, 1), bool)] + masks, axis=1)
    x = conformer.Conformer(self.dim, self.layers, self.heads, self.ff_mult, self.kernel,
                             self.dropout, project=False, dtype=self.dtype, name='conformer')(x, mask, train=train)
    return _torch_dense(self.num_classes, self.dim, 'out', self.dtype)(x[:, 0])
