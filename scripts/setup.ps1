# Windows: install localchat into .\.venv (scripts\start.ps1 and scripts\test.ps1 call this). The work is
# done by scripts\setup.py, the same on every platform (TORCH_INDEX_URL, TORCH_VERSION, LOCALCHAT_EXTRAS).
# $env:PYTHON picks the interpreter; otherwise the py launcher, else python on PATH.
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..")
if ($env:PYTHON) {
    & $env:PYTHON scripts\setup.py
} elseif (Get-Command py -ErrorAction SilentlyContinue) {
    & py -3 scripts\setup.py
} else {
    & python scripts\setup.py
}
exit $LASTEXITCODE
