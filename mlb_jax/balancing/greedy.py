"""Greedy (Wu, Jastrzebski, Cho & Geras, ICML 2022), balanced multimodal learning as the authors'
code runs it (docs/methods.md#greedy), with BalanceBenchmark's differences listed below.

The model is the `mmtm` fusion (`mlb_jax.models.fusion.MMTMFusion`): a cross-modal
squeeze-excitation block on the pooled features, g_m = sigmoid(Linear_m(relu(Linear(concat f)))),
then one classifier per modality on f_m * g_m, x_m = Linear_m(f_m * g_m), fused logits the mean
of the x_m. The squeeze and the excitations are the "bypass" through which one modality's
features reach the other's prediction.

Conditional learning speed. After each backward pass, for each parameter group G,
gn_G = sum_{theta in G} ||grad theta||^2 and wn_G = sum_{theta in G} ||theta||^2:

    bypass_m = the squeeze (shared: counted for every modality) + modality m's excitation
    main_m   = modality m's encoder + its classifier (`main_classifier`; the original's
               classifier is part of the branch network) -- the probe heads are not counted
    M_bypass_m += gn(bypass_m) / wn(bypass_m),   M_main_m += gn(main_m) / wn(main_m)
    BDR_m = log10(M_bypass_m / M_main_m),        d = BDR_0 - BDR_1

The sums run from the first step and are never reset; as the original, they (and d) are
updated on the steps that do not curate only.

Curation (`curation_update`), from epoch `starting_epoch` on (before it: sums only, no curation):

    not curating, |d| > eps:  start, counter = 0, caring = 1 if d < 0 else 0
    not curating otherwise:   stay out, caring = 0
    curating:                 counter += 1; leave when counter = W

While curating, the next train-mode forward passes replace the cared modality's gate by its
running mean over the train-mode forward passes so far (`model_args`: `curate` [2], data for
`jnp.where`). So a decision at step t acts on steps t + 1 .. t + W, as the original's callback
that runs between the backward pass and the optimizer step.

Loss (`loss`): 'branches' (the original's `blend_loss`): w_f sum_m CE(x_m); 'fused': w_f CE(z)
(BalanceBenchmark's trainer). The unimodal heads are stop-gradient probes (their CE trains
the heads only).

Guards: a group with wn = 0 contributes a ratio of 0; BDR_m is 0 until both of its sums are
positive, and d is 0 until both BDRs are defined (the original gives NaN there, and a NaN d
never starts curation), so zero gradients give no NaN and no curation.

Defaults (the original's `training_guided.gin`): eps 0.01, W 5, starting_epoch 2 of its
1-based epochs, our 0-based epoch 1. BalanceBenchmark's trainer: eps 0.001 (`alpha`), no
starting epoch (`starting_epoch = 0` here), CE of its concat head, MMTM after every ResNet stage.
Two modalities only, as both codes (the excitations and d are written for two).

Worked example: bypass (gn, wn) = (0.04, 4), (0.01, 4); main (1, 100), (0.4, 80):
M_bypass = (0.01, 0.0025), M_main = (0.01, 0.005), BDR = (0, -0.30103), d = 0.30103 > eps:
curation starts with caring 0.
"""

import jax
import jax.numpy as jnp

from mlb_jax.balancing.method import LossInputs, Method, MethodContext, epochs_to_steps, multiloss_objectives
from mlb_jax.losses import FUSED, cross_entropy

FUSIONS = ('mmtm',)
LOSSES = ('branches', 'fused')


def squared_norm(tree) -> jax.Array:
  """sum of x^2 over every leaf of `tree`, float32 [] (0 for an empty tree)."""
  return sum((jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)),
             jnp.zeros((), jnp.float32))


def group_norms(tree, modalities, main_classifier: bool = True):
  """(bypass [M], main [M]): squared norms of a params-shaped tree (parameters or gradients)
  over each modality's bypass group (the MMTM squeeze + its excitation) and main group (its
  encoder, + its classifier when `main_classifier`)."""
  fusion = tree['fusion']
  shared = squared_norm(fusion['squeeze'])
  bypass = [shared + squared_norm(fusion[f'excite_{m}']) for m in modalities]
  main = [squared_norm(tree[m]['encoder']) + (squared_norm(fusion[f'classifier_{m}']) if main_classifier else 0.0)
          for m in modalities]
  return jnp.stack(bypass), jnp.stack(main)


def norm_ratio(gn: jax.Array, wn: jax.Array) -> jax.Array:
  """gn / wn, 0 where wn = 0."""
  positive = wn > 0
  return jnp.where(positive, gn / jnp.where(positive, wn, 1.0), 0.0)


def balance_ratios(bypass_sum: jax.Array, main_sum: jax.Array):
  """(BDR [M], d []): BDR_m = log10(M_bypass_m / M_main_m), 0 until both sums are positive;
  d = BDR_0 - BDR_1, 0 until both BDRs are defined."""
  defined = (bypass_sum > 0) & (main_sum > 0)
  safe = lambda x: jnp.where(defined, x, 1.0)
  bdr = jnp.where(defined, jnp.log10(safe(bypass_sum) / safe(main_sum)), 0.0)
  d = jnp.where(jnp.all(defined), bdr[0] - bdr[1], 0.0)
  return bdr, d


def curation_update(curating, counter, caring, d, active, eps: float, window: int):
  """One step of the curation state machine: (curating, counter, caring) after seeing d.

  Args:
    curating: bool []: curating before this step.
    counter: int32 []: curation steps taken.
    caring: int32 []: the modality whose gate is replaced while curating.
    d: BDR_0 - BDR_1 of this step (ignored while curating).
    active: bool []: the starting epoch is reached (else: not curating, caring 0).
    eps, window: the threshold and W.
  """
  curating, active = jnp.asarray(curating, bool), jnp.asarray(active, bool)
  counter, caring = jnp.asarray(counter, jnp.int32), jnp.asarray(caring, jnp.int32)
  start = ~curating & (jnp.abs(d) > eps)
  next_counter = jnp.where(curating, counter + 1, jnp.where(start, 0, counter))
  next_curating = jnp.where(curating, next_counter < window, start)
  next_caring = jnp.where(curating, caring, jnp.where(start, (d < 0).astype(jnp.int32), 0))
  return (active & next_curating, next_counter, jnp.where(active, next_caring, 0))


def curate_mask(curating, caring, num_modalities: int = 2) -> jax.Array:
  """float32 [M]: 1 for the cared modality while curating, else 0 (MMTM's `curate`)."""
  return (jnp.asarray(curating, bool) & (jnp.arange(num_modalities) == caring)).astype(jnp.float32)


def init_state(num_modalities: int = 2) -> dict:
  """The sums, the last BDR and d, and the curation flag, counter and cared modality."""
  zeros = jnp.zeros((num_modalities,), jnp.float32)
  scalar = lambda dtype: jnp.zeros((), dtype)
  return {'bypass': zeros, 'main': zeros, 'bdr': zeros, 'd': scalar(jnp.float32),
          'curating': scalar(jnp.int32), 'counter': scalar(jnp.int32), 'caring': scalar(jnp.int32)}


def greedy_update(state: dict, grad_norms, param_norms, active, eps: float, window: int) -> dict:
  """The state after one backward pass, from the (bypass, main) squared norms of the
  gradients and of the parameters: the sums and d move on non-curation steps only."""
  curating = state['curating'] > 0
  bypass = jnp.where(curating, state['bypass'], state['bypass'] + norm_ratio(grad_norms[0], param_norms[0]))
  main = jnp.where(curating, state['main'], state['main'] + norm_ratio(grad_norms[1], param_norms[1]))
  bdr, d = balance_ratios(bypass, main)
  bdr, d = jnp.where(curating, state['bdr'], bdr), jnp.where(curating, state['d'], d)
  next_curating, counter, caring = curation_update(curating, state['counter'], state['caring'], d, active,
                                                   eps, window)
  return {'bypass': bypass, 'main': main, 'bdr': bdr, 'd': d, 'curating': next_curating.astype(jnp.int32),
          'counter': counter, 'caring': caring}


def make_greedy(modalities: tuple[str, ...], cfg, ctx: MethodContext) -> Method:
  """Greedy from `config.balancing.greedy` (`eps`, `window`, `starting_epoch`, `loss`, `main_classifier`)."""
  greedy = cfg.greedy
  eps, window, starting_epoch = float(greedy.eps), int(greedy.window), int(greedy.starting_epoch)
  mode, main_classifier = greedy.loss, bool(greedy.main_classifier)
  if eps < 0:
    raise ValueError(f'balancing.greedy.eps must be >= 0, got {eps}')
  if window < 1:
    raise ValueError(f'balancing.greedy.window must be >= 1, got {window}')
  if starting_epoch < 0:
    raise ValueError(f'balancing.greedy.starting_epoch must be >= 0, got {starting_epoch}')
  if mode not in LOSSES:
    raise ValueError(f"balancing.greedy.loss must be one of {LOSSES}, got '{mode}'")
  first_step = epochs_to_steps(starting_epoch, ctx)
  num = len(modalities)

  def loss(inputs: LossInputs, state):
    out = inputs.output
    probes, metrics = multiloss_objectives(inputs, {m: out.logits[m] for m in modalities})
    fused, fused_metrics = multiloss_objectives(inputs, {FUSED: out.logits[FUSED]})
    metrics.update(fused_metrics)
    if mode == 'fused':
      main = fused['multiloss']
    else:   # x_m = M z_m: each modality's classifier, the contributions being x_m / M
      branch = {m: cross_entropy(num * out.contributions[m], inputs.labels) for m in modalities}
      main = inputs.loss_weights[FUSED] * sum(branch.values())
      metrics.update({f'loss_branch_{m}': v for m, v in branch.items()})
    return {'greedy': main, 'probes': probes['multiloss']}, state, metrics

  def gradients(grads, inputs, state):
    new = greedy_update(state, group_norms(grads, modalities, main_classifier),
                        group_norms(inputs.params, modalities, main_classifier),
                        inputs.step >= first_step, eps, window)
    metrics = {'greedy_d': new['d'], 'greedy_curating': new['curating'].astype(jnp.float32),
               'greedy_caring': new['caring'].astype(jnp.float32)}
    for i, m in enumerate(modalities):
      metrics[f'greedy_bdr_{m}'] = new['bdr'][i]
    return grads, new, metrics

  def model_args(state):
    return {'curate': curate_mask(state['curating'] > 0, state['caring'], num)}

  return Method('greedy', init_state=lambda variables: init_state(num), loss=loss, gradients=gradients,
                model_args=model_args, unimodal_heads='probe', fusion='mmtm', fusions=FUSIONS,
                max_modalities=2)
