# CPU-only build of the same C++ sources for node-gyp: the install fallback when no prebuilt binary loads, and
# what prebuildify drives on platforms without a CUDA prebuild. The CUDA build is CMakeLists.txt (cmake-js).
# Sources are listed by scripts/gyp-sources.cjs from the folders, so this file never goes stale.
{
  "targets": [
    {
      "target_name": "moe_offload",
      "sources": ["<!@(node scripts/gyp-sources.cjs)"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "cpp", "cuda"],
      "defines": [
        "NAPI_VERSION=8",
        "NODE_ADDON_API_CPP_EXCEPTIONS",
        "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS",
        "MOE_PACKAGE_BUILD=\"node-gyp\""
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++20"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-O3", "-fvisibility=hidden"],
      "xcode_settings": {
        "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
        "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
        "MACOSX_DEPLOYMENT_TARGET": "11.0"
      },
      "msvs_settings": { "VCCLCompilerTool": { "ExceptionHandling": 1, "AdditionalOptions": ["/std:c++17"] } }
    }
  ]
}
