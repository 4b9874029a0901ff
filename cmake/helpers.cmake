# One helper per kind of target, so every target of a kind is built the same way.

# antares_library(NAME SOURCES ... DEPS ...): a static library whose headers are
# included by path from the repository root ("fs/remote/mega_client.h").
function(antares_library name)
  cmake_parse_arguments(A "" "" "SOURCES;DEPS" ${ARGN})
  add_library(${name} STATIC ${A_SOURCES})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(${name} PUBLIC ${A_DEPS})
endfunction()

# antares_executable(NAME SOURCES ... DEPS ...)
function(antares_executable name)
  cmake_parse_arguments(A "" "" "SOURCES;DEPS" ${ARGN})
  add_executable(${name} ${A_SOURCES})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(${name} PRIVATE ${A_DEPS})
endfunction()

# antares_test(NAME SOURCES ... DEPS ... [LABELS ...]): a GoogleTest binary whose
# cases ctest discovers one by one.
function(antares_test name)
  if(NOT ANTARES_BUILD_TESTS)
    return()
  endif()
  cmake_parse_arguments(A "" "" "SOURCES;DEPS;LABELS" ${ARGN})
  add_executable(${name} ${A_SOURCES})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(${name} PRIVATE ${A_DEPS} GTest::gtest GTest::gtest_main)
  if(NOT A_LABELS)
    set(A_LABELS unit)
  endif()
  gtest_discover_tests(${name}
    DISCOVERY_TIMEOUT 60
    PROPERTIES LABELS "${A_LABELS}" TIMEOUT 300
               ENVIRONMENT "ANTARES_BIN_DIR=${PROJECT_BINARY_DIR}/bin")
endfunction()

# antares_benchmark(NAME SOURCES ... DEPS ...): a Google Benchmark binary.
function(antares_benchmark name)
  if(NOT ANTARES_BUILD_BENCHMARKS)
    return()
  endif()
  cmake_parse_arguments(A "" "" "SOURCES;DEPS" ${ARGN})
  add_executable(${name} ${A_SOURCES})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(${name} PRIVATE ${A_DEPS} benchmark::benchmark)
endfunction()
