// Runs the backend tests on Kokkos::Cuda, data in device memory.
#ifndef DILATED_TEST_CUDA_CATEGORY_HPP
#define DILATED_TEST_CUDA_CATEGORY_HPP

#include <Kokkos_Core.hpp>

#define TEST_CATEGORY "[cuda]"
#define TEST_EXECSPACE Kokkos::Cuda
#define TEST_MEMSPACE Kokkos::CudaSpace

#endif
