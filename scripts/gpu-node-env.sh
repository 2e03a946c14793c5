# Sourced by scripts/gpu-session.sh to run Node on a lent GPU machine, after
# scripts/gpu-carry.sh here and a device call carrying .device/carry: unpacks the carried node binary, puts the
# carried dist/ and runtime node_modules/ in place and points the package at the carried CUDA addon. Leaves
# NODE (the node binary) and MOE_OFFLOAD_PREBUILD set; run from the repository root.
carry=.device/carry
mkdir -p .device/bin
[ -x .device/bin/node ] || { xz -d -c "$carry/node.xz" > .device/bin/node && chmod +x .device/bin/node; }
# copies, not links: Node resolves a module's real path, and the addon is found from the package root above dist/
rm -rf dist node_modules && cp -r "$carry/dist" dist && cp -r "$carry/node_modules" node_modules
mkdir -p .device/prebuild/build/Release && cp "$carry/addon/moe_offload.node" .device/prebuild/build/Release/
export MOE_OFFLOAD_PREBUILD="$PWD/.device/prebuild"
NODE=.device/bin/node
