#!/bin/bash
source /work/venv/bin/activate
cd /work/runs/p20
COMMON="--set data.path=/work/mnist.h5 --set run.dir=/work/runs/p20 --set train.seed=100 --set train.epochs=10 --set run.keep_last=10 --set train.report_test=false --set optim.ema_decay=0.999"
( time mpirun -n 2 python -m dist.ensemble --members 3 --ranks-per-member 2 --preset best --name p20-E2 $COMMON --set data.elastic_alpha=36 --set data.elastic_sigma=6 ) > p20-E2.log 2>&1
