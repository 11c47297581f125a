# Runs a command and checks its exit status and output, for the dilated-attention tool's tests:
# a status other than EXPECTED_STATUS (a crash reads as a signal name, never a number) or output
# (standard output and error together) that does not match EXPECTED_OUTPUT fails the test.
#   cmake -DTOOL=<exe> -DARGS="<arguments>" -DEXPECTED_STATUS=2 -DEXPECTED_OUTPUT=<regex>
#         -P RunAndExpect.cmake
separate_arguments(_args UNIX_COMMAND "${ARGS}")
execute_process(COMMAND ${TOOL} ${_args} RESULT_VARIABLE _status OUTPUT_VARIABLE _out
                ERROR_VARIABLE _err)
set(_all "${_out}${_err}")
message("${_all}")
if(NOT "${_status}" STREQUAL "${EXPECTED_STATUS}")
  message(FATAL_ERROR "exit status '${_status}', expected ${EXPECTED_STATUS}")
endif()
if(DEFINED EXPECTED_OUTPUT AND NOT _all MATCHES "${EXPECTED_OUTPUT}")
  message(FATAL_ERROR "output does not match '${EXPECTED_OUTPUT}'")
endif()
