# Sourced by the scripts that run the library on a CPU (demo.sh, train_vs_peer.sh DEVICE=cpu):
# prefer the OpenMP build of Debian's OpenBLAS (libopenblas0-openmp, installed by setup.sh) to
# the pthread build that Debian selects by default. The OpenMP build runs its products on the
# OpenMP threads the library's kernels use; the pthread build keeps a second pool of as many
# threads, which a bound first OpenMP thread confines to one core and which otherwise contends
# with the OpenMP threads. Measured on a 16-core Xeon (docs/training.md, "On the CPU beside
# PyTorch"): the 125M model's products 6.27 -> 3.71 s a step, the step 8.61 -> 6.07 s.
# DILATED_HOST_BLAS=pthread keeps the system's choice.
if [ "${DILATED_HOST_BLAS:-openmp}" = openmp ]; then
  for dilated_blas_dir in /usr/lib/"$(uname -m)"-linux-gnu/openblas-openmp; do
    if [ -e "$dilated_blas_dir/libopenblas.so.0" ]; then
      export LD_LIBRARY_PATH="$dilated_blas_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
      echo "[blas] OpenBLAS' OpenMP build: $dilated_blas_dir" >&2
    fi
  done
  unset dilated_blas_dir
fi
