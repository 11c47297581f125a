# dilated_find_python(<var> MODULES <module>...)
#   Sets <var> to a Python 3 interpreter that imports every module (Debian's /usr/bin/python3
#   first: scripts/setup.sh installs python3-numpy and python3-matplotlib there, while a python3
#   earlier on PATH, e.g. pyenv's, may lack them), or to "" when none does. The tests that need
#   it are left out then, with a message.
function(dilated_find_python var)
  cmake_parse_arguments(ARG "" "" "MODULES" ${ARGN})
  string(REPLACE ";" ", " _modules "${ARG_MODULES}")
  find_program(_dilated_path_python3 python3)
  set(${var} "" PARENT_SCOPE)
  foreach(_candidate /usr/bin/python3 ${_dilated_path_python3})
    if(NOT EXISTS "${_candidate}")
      continue()
    endif()
    execute_process(COMMAND "${_candidate}" -c "import ${_modules}" RESULT_VARIABLE _status
                    OUTPUT_QUIET ERROR_QUIET)
    if(_status EQUAL 0)
      set(${var} "${_candidate}" PARENT_SCOPE)
      return()
    endif()
  endforeach()
  message(STATUS "No python3 with ${_modules}: the tests that use them are not registered")
endfunction()
