# dilated_add_backend_tests(NAMES <name>...)
#   For every Kokkos backend this build has (Serial, OpenMP, CUDA), generates
#   tst<name>_<Backend>.cpp = Test<Backend>_Category.hpp + tst<name>.hpp and registers one
#   executable and ctest per (name, backend): every test body runs on every backend, or on those
#   listed in DilatedAttention_TEST_BACKENDS (e.g. "OpenMP": the sanitizer build's one backend).
# dilated_add_host_tests(NAMES <name>...)
#   tst<name>.cpp on the host only (the double reference, golden files, .npy I/O).

set(DILATED_TEST_HARNESS_DIR ${CMAKE_CURRENT_LIST_DIR}/../unit_tests/harness)

# The Catch2 main with Kokkos' ScopeGuard, compiled once a build and linked into every test
# executable: it includes Kokkos_Core.hpp (11-33 s a compile in a CUDA build on 2 cores).
function(_dilated_test_main)
  if(TARGET dilated_test_main)
    return()
  endif()
  add_library(dilated_test_main OBJECT ${DILATED_TEST_HARNESS_DIR}/unit_test_main.cpp)
  target_link_libraries(dilated_test_main PRIVATE DilatedAttention::dilated_attention
                                                  Catch2::Catch2)
  dilated_kokkos_sources(dilated_test_main)
endfunction()

function(_dilated_add_test_executable target)
  _dilated_test_main()
  add_executable(${target} ${ARGN})
  target_link_libraries(${target} PRIVATE dilated_test_main)
  target_include_directories(${target} PRIVATE ${DILATED_TEST_HARNESS_DIR}
                                               ${CMAKE_CURRENT_SOURCE_DIR})
  target_link_libraries(${target} PRIVATE DilatedAttention::dilated_attention Catch2::Catch2
                                          nlohmann_json::nlohmann_json)
  target_compile_definitions(${target} PRIVATE DILATED_GOLDEN_DIR="${DilatedAttention_GOLDEN_DIR}")
  dilated_kokkos_sources(${target})
  # Two OpenMP threads: this is what CI's 2-core machine has, and it exercises the threading.
  add_test(NAME ${target} COMMAND ${target})
  set_tests_properties(${target} PROPERTIES ENVIRONMENT "OMP_NUM_THREADS=2;OMP_PROC_BIND=false")
endfunction()

function(dilated_add_backend_tests)
  cmake_parse_arguments(ARG "" "" "NAMES" ${ARGN})
  set(_categories SERIAL Serial OPENMP OpenMP CUDA Cuda)
  foreach(_test ${ARG_NAMES})
    set(_i 0)
    while(_i LESS 6)
      list(GET _categories ${_i} _flag)
      math(EXPR _j "${_i} + 1")
      list(GET _categories ${_j} _backend)
      math(EXPR _i "${_i} + 2")
      if(NOT Kokkos_ENABLE_${_flag})
        continue()
      endif()
      if(DilatedAttention_TEST_BACKENDS AND NOT _backend IN_LIST DilatedAttention_TEST_BACKENDS)
        continue()
      endif()
      set(_dir ${CMAKE_CURRENT_BINARY_DIR}/${_backend})
      set(_file ${_dir}/tst${_test}_${_backend}.cpp)
      set(_content "#include <Test${_backend}_Category.hpp>\n#include <tst${_test}.hpp>\n")
      # Rewrite only on change so a reconfigure does not rebuild every test.
      if(EXISTS ${_file})
        file(READ ${_file} _old)
      else()
        set(_old "")
      endif()
      if(NOT _old STREQUAL _content)
        file(WRITE ${_file} "${_content}")
      endif()
      _dilated_add_test_executable(dilated_${_test}_${_backend} ${_file})
    endwhile()
  endforeach()
endfunction()

function(dilated_add_host_tests)
  cmake_parse_arguments(ARG "" "" "NAMES" ${ARGN})
  foreach(_test ${ARG_NAMES})
    _dilated_add_test_executable(dilated_${_test} tst${_test}.cpp)
  endforeach()
endfunction()
