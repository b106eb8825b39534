#!/usr/bin/env bash
# Fetch ONNX Runtime's shared library for capfilt's worker from PyPI wheels (no other host is needed).
#
#   scripts/fetch-onnxruntime.sh          CPU build: onnxruntime==1.31.1
#   scripts/fetch-onnxruntime.sh --gpu    CUDA build: onnxruntime-gpu==1.31.1 + the nvidia CUDA 13 wheels
#
# Result (ignored by git):
#   third_party/onnxruntime/cpu/lib/libonnxruntime.so.1.31.1 (+ .so.1, .so links)
#   third_party/onnxruntime/gpu/lib/libonnxruntime.so.1.31.1, libonnxruntime_providers_{shared,cuda}.so
#   third_party/onnxruntime/gpu/nvidia/{cu13,cudnn}/lib/*.so*   and   third_party/onnxruntime/gpu/env.sh
#
# Every wheel is sha256-pinned (scripts/onnxruntime-*.lock.txt, pip --require-hashes).
# Idempotent: a second run with the library in place returns at once.
# Environment: CAPFILT_ORT_DIR overrides the destination (default: <repo>/third_party/onnxruntime).
set -euo pipefail

ORT_VERSION=1.31.1
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
dest_root=${CAPFILT_ORT_DIR:-$repo/third_party/onnxruntime}
python=${PYTHON:-python3}

variant=cpu
case "${1:-}" in
  "" | --cpu) variant=cpu ;;
  --gpu) variant=gpu ;;
  -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
  *) echo "fetch-onnxruntime: unknown argument '$1' (use --cpu or --gpu)" >&2; exit 2 ;;
esac

dest=$dest_root/$variant
lock=$here/onnxruntime-$variant.lock.txt
stamp=$dest/.stamp
want_stamp="onnxruntime-$variant $ORT_VERSION $(sha256sum "$lock" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ] && [ -f "$dest/lib/libonnxruntime.so.$ORT_VERSION" ]; then
  echo "onnxruntime $variant $ORT_VERSION already in $dest/lib"
  exit 0
fi

command -v unzip >/dev/null || { echo "fetch-onnxruntime: 'unzip' is missing (apt-get install -y unzip)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The ORT wheel is platform specific: ask pip for the manylinux x86_64 CPython 3.11 build explicitly so the
# download does not depend on the local Python. The library inside does not depend on Python at all.
echo "downloading onnxruntime $variant $ORT_VERSION wheels from PyPI (sha256-pinned)"
grep -E '^onnxruntime' "$lock" > "$work/ort.txt"
"$python" -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
  --python-version 3.11 --implementation cp --abi cp311 --platform manylinux_2_28_x86_64 \
  -r "$work/ort.txt" -d "$work/wheels"
if [ "$variant" = gpu ]; then
  # The nvidia wheels carry older manylinux tags: let pip pick them for this platform.
  grep -E '^nvidia' "$lock" > "$work/nvidia.txt"
  "$python" -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
    -r "$work/nvidia.txt" -d "$work/wheels"
fi

rm -rf "$dest.tmp"
mkdir -p "$dest.tmp/lib"
ort_wheel=$(ls "$work"/wheels/onnxruntime*-"$ORT_VERSION"-*.whl)
exclude=()
# The GPU wheel also carries the TensorRT provider, which capfilt does not use.
[ "$variant" = gpu ] && exclude=(-x '*tensorrt*')
unzip -q -j -o "$ort_wheel" 'onnxruntime/capi/libonnxruntime*.so*' "${exclude[@]}" -d "$dest.tmp/lib"
ln -sf "libonnxruntime.so.$ORT_VERSION" "$dest.tmp/lib/libonnxruntime.so.1"
ln -sf "libonnxruntime.so.1" "$dest.tmp/lib/libonnxruntime.so"

if [ "$variant" = gpu ]; then
  mkdir -p "$dest.tmp/nvidia"
  for w in "$work"/wheels/nvidia_*.whl; do
    unzip -q -o "$w" 'nvidia/*' -d "$dest.tmp/site"
  done
  # Keep only the shared libraries, with the wheels' own nvidia/<pkg>/lib layout side by side.
  (cd "$dest.tmp/site/nvidia" && find . -path '*/lib/*.so*' -exec cp --parents -a {} "$dest.tmp/nvidia/" \;)
  rm -rf "$dest.tmp/site"
  libdirs=$(cd "$dest.tmp/nvidia" && find . -type d -name lib | sed 's|^\./||' | sort | tr '\n' ' ')
  {
    echo "# source this file before starting a CUDA worker: it puts ORT's CUDA dependencies on the loader path"
    echo "export ORT_DYLIB_PATH=\"$dest/lib/libonnxruntime.so.$ORT_VERSION\""
    printf 'export LD_LIBRARY_PATH="%s' "$dest/lib"
    for d in $libdirs; do printf ':%s' "$dest/nvidia/$d"; done
    echo '${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"'
  } > "$dest.tmp/env.sh"
fi

echo "$want_stamp" > "$dest.tmp/.stamp"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "onnxruntime $variant $ORT_VERSION installed in $dest/lib"
[ "$variant" = gpu ] && echo "before a CUDA worker: source $dest/env.sh"
exit 0
