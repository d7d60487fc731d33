"""What a user runs and reads: predict, serve and report, the presets and the shipped models.

    python -m launch.predict digit.png    # classify images (launch/images.py prepares them)
    python -m launch.serve                # draw a digit in the browser
    python -m launch.report runs/<name>   # a run's curves, confusion matrix and mistakes
    sbatch launch/slurm.sbatch            # train on a Slurm cluster (hostfile.example: mpirun)

configs/ holds the presets of `python -m dist.train --preset NAME`, models/ the trained models
that predict and serve use by default.  The developers' measuring instruments (benchmarks,
fake hosts, ablation) are in launch/lab/.
"""
