# Script mode (cmake -P): writes OUTPUT, a header defining DILATED_GIT_HASH as the commit of
# SOURCE_DIR (with -dirty for uncommitted changes), rewriting it only when it changed.
execute_process(COMMAND git rev-parse --short=12 HEAD WORKING_DIRECTORY ${SOURCE_DIR}
                OUTPUT_VARIABLE _hash OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
execute_process(COMMAND git status --porcelain --untracked-files=no WORKING_DIRECTORY ${SOURCE_DIR}
                OUTPUT_VARIABLE _dirty OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
if(NOT _hash)
  set(_hash "unknown")
endif()
if(_dirty)
  string(APPEND _hash "-dirty")
endif()
set(_content "// Generated at build time by cmake/DilatedAttention_GitHash.cmake.\n#define DILATED_GIT_HASH \"${_hash}\"\n")
if(EXISTS ${OUTPUT})
  file(READ ${OUTPUT} _old)
endif()
if(NOT "${_old}" STREQUAL "${_content}")
  file(WRITE ${OUTPUT} "${_content}")
endif()
