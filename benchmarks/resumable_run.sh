# Sourced by the benchmark scripts. run NAME CONFIG...: skip a finished run, resume an
# interrupted one, else start it (with data.root=$DATA and the script's $EXTRA overrides).
run() {
  local name=$1; shift
  if [ -f "runs/$name/summary.json" ]; then return; fi
  local resume=""
  if [ -f "runs/$name/checkpoints/last.pt" ]; then resume="--resume"; fi
  kdforge train "$@" --set name="$name" --set data.root="$DATA" $resume $EXTRA
}
