"""Cluster launchers: SLURM (submitit) and local phase chains, sbatch rendering, requeue.

Entry point: ``python launch/submit.py --phase all --cluster slurm --profile configs/cluster/NAME.yaml``.
"""
