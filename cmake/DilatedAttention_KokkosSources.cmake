# dilated_kokkos_sources(<target>)
#
# Kokkos compiles device code in one of two ways, and a target that includes Kokkos headers
# must follow:
#  - Kokkos configured with Kokkos_ENABLE_COMPILE_AS_CMAKE_LANGUAGE (Kokkos_COMPILE_LANGUAGE is
#    CUDA): the target's C++ sources are compiled as CMake's CUDA language;
#  - Kokkos with nvcc_wrapper as CMAKE_CXX_COMPILER, or a host-only Kokkos: nothing to do.
function(dilated_kokkos_sources target)
  if(Kokkos_COMPILE_LANGUAGE STREQUAL "CUDA")
    get_target_property(_sources ${target} SOURCES)
    foreach(_source ${_sources})
      if(_source MATCHES "\\.(cpp|cc|cxx)$")
        set_source_files_properties(${_source} TARGET_DIRECTORY ${target}
                                    PROPERTIES LANGUAGE CUDA)
      endif()
    endforeach()
  endif()
endfunction()
