#!/bin/bash
source /work/venv/bin/activate
cd /work/runs/p20
( time mpirun -n 2 python -m dist.ensemble --members 1 --preset best --snapshots --name p20-C3 --set schedule.kind=cyclic --set schedule.cycles=3 --set train.epochs=24 --set train.seed=200 --set run.keep_last=24 --set data.path=/work/mnist.h5 --set run.dir=/work/runs/p20 --set train.report_test=false --set optim.ema_decay=0 --set data.elastic_alpha=36 --set data.elastic_sigma=6 ) > p20-C3.log 2>&1
