#!/bin/bash
# side by side, alternating torch and mpigrad, one sitting (1x2: threads split by batch, the
# default, and by layers)
cd /work/main
export PATH=/work/venv/bin:$PATH MPIGRAD_DATA=/work/mnist.h5 PYTHONPATH=/work/main
out=${1:-/tmp/side}
mkdir -p $out
for p in mlp cnn best; do
  /work/torch-venv/bin/python ../shared/peer/torch_peer.py --preset $p --threads 2 --seconds 10 > $out/torch-$p-1x2.json 2>$out/torch-$p-1x2.err
  python -m launch.bench --presets $p --threads 2 --seconds 2 --blocks 3 --eval-images 10000 --out $out/mpigrad-$p-1x2.json > $out/mpigrad-$p-1x2.txt 2>&1
  python -m launch.bench --presets $p --threads 2 --split layers --seconds 2 --blocks 3 --eval-images 10000 --out $out/mpigrad-$p-1x2-layers.json > $out/mpigrad-$p-1x2-layers.txt 2>&1
  /work/torch-venv/bin/torchrun --nproc_per_node 2 ../shared/peer/torch_peer.py --preset $p --threads 1 --seconds 10 > $out/torch-$p-2x1.json 2>$out/torch-$p-2x1.err
  python -m launch.bench --presets $p --ranks 2 --threads 1 --seconds 2 --blocks 3 --eval-images 10000 --out $out/mpigrad-$p-2x1.json > $out/mpigrad-$p-2x1.txt 2>&1
done
echo SIDEDONE
