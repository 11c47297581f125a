// Runs the backend tests on Kokkos::OpenMP.
#ifndef DILATED_TEST_OPENMP_CATEGORY_HPP
#define DILATED_TEST_OPENMP_CATEGORY_HPP

#include <Kokkos_Core.hpp>

#define TEST_CATEGORY "[openmp]"
#define TEST_EXECSPACE Kokkos::OpenMP
#define TEST_MEMSPACE Kokkos::HostSpace

#endif
