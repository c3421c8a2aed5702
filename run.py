"""Train or evaluate one configuration (the `mlb-train` command; see mlb_jax/main.py).

  python run.py                                    # the embedded MLB benchmark
  python run.py --config=configs/synthetic.py:method=joint --workdir=/tmp/joint
  python run.py --config=configs/synthetic.py --config.balancing.mlb.alpha=1.5
  python run.py --config=... --workdir=... --mode=eval   # re-evaluate the best checkpoint
  python run.py --config=configs/synthetic.py --config.num_seeds=3 --workdir=w   # w/seed_0..2

Exit status: 0 done, 1 error, 2 bad flags, 143 SIGTERM / 130 Ctrl-C (run the same command again).
"""

from mlb_jax.main import entry

if __name__ == '__main__':
  entry()
