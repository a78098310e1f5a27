# Sourced by tests/cli/*.sh: the small generated dataset the CLI tests train on.
# (Not in tests/cli/, where every *.sh is registered as a test.)

# write_prose DIR FILES SEED: FILES documents of 1200 words from a small list, drawn with bash's
# RANDOM seeded with SEED (the same files every run).
write_prose() {
  local dir=$1 files=$2 f i
  local words=(the expert router sends each token to two of four experts and a shared one learns from all)
  mkdir -p "$dir"
  RANDOM=$3
  for ((f = 1; f <= files; f++)); do
    for ((i = 0; i < 1200; i++)); do printf '%s ' "${words[RANDOM % ${#words[@]}]}"; done >"$dir/doc$f.txt"
  done
}

# make_dataset MOERUN TEXT_DIR OUT ARITHMETIC_DOCS: `moerun prepare` of prose=TEXT_DIR plus
# generated arithmetic into OUT; on failure prints the output and exits the test with 1.
make_dataset() {
  local out rc
  out=$(timeout 120 "$1" prepare --input "prose=$2" --arithmetic-docs "$4" --seed 3 \
    --validation-fraction 0.2 --output "$3" --quiet 2>&1); rc=$?
  if [[ $rc -ne 0 || ! -s $3 ]]; then
    echo "FAIL: moerun prepare -> exit $rc"; sed 's/^/    /' <<<"$out"; exit 1
  fi
}
