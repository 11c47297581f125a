// Runs the backend tests on Kokkos::Serial.
#ifndef DILATED_TEST_SERIAL_CATEGORY_HPP
#define DILATED_TEST_SERIAL_CATEGORY_HPP

#include <Kokkos_Core.hpp>

#define TEST_CATEGORY "[serial]"
#define TEST_EXECSPACE Kokkos::Serial
#define TEST_MEMSPACE Kokkos::HostSpace

#endif
