# SPDX-License-Identifier: MIT
# Finds the Debian packages that cmake/layers.txt names, at the top of the tree so that every folder sees their
# targets. The fuzz build (TOGETHER_FUZZ) compiles only the parsers: no gRPC, libtorch, gloo or Qt.

find_package(nlohmann_json REQUIRED)
find_package(OpenSSL REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET GLOBAL libpcre2-8)
pkg_check_modules(ICU REQUIRED IMPORTED_TARGET GLOBAL icu-uc)
find_package(Protobuf REQUIRED)
if(TOGETHER_FUZZ)
  return()
endif()

find_package(gRPC CONFIG REQUIRED)
find_program(GRPC_CPP_PLUGIN grpc_cpp_plugin REQUIRED)

find_package(Gloo REQUIRED)
# Debian's Gloo package exports only a RelWithDebInfo configuration.
set_target_properties(gloo PROPERTIES MAP_IMPORTED_CONFIG_RELEASE RelWithDebInfo MAP_IMPORTED_CONFIG_DEBUG RelWithDebInfo
                                      MAP_IMPORTED_CONFIG_MINSIZEREL RelWithDebInfo)

# libtorch (Debian's libtorch-dev) ships no CMake package that fits a lean build: its two libraries, as targets.
find_library(TORCH_CPU_LIBRARY torch_cpu REQUIRED)
find_library(C10_LIBRARY c10 REQUIRED)
add_library(c10 UNKNOWN IMPORTED)
set_target_properties(c10 PROPERTIES IMPORTED_LOCATION ${C10_LIBRARY})
add_library(torch_cpu UNKNOWN IMPORTED)
set_target_properties(torch_cpu PROPERTIES IMPORTED_LOCATION ${TORCH_CPU_LIBRARY} INTERFACE_LINK_LIBRARIES "c10;${CMAKE_DL_LIBS}")

find_package(Qt6 REQUIRED COMPONENTS Core Gui Widgets PrintSupport)
find_package(QCustomPlotQt6 REQUIRED)
