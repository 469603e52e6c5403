# Windows: one command from a fresh clone to a running chat (PowerShell):
#   powershell -ExecutionPolicy Bypass -File scripts\start.ps1
# Installs what is missing, then starts localchat on http://127.0.0.1:7860 with the bundled model.
# Extra arguments go to localchat (see --help).
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..")
& (Join-Path $PSScriptRoot "setup.ps1")
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
& .venv\Scripts\python.exe -m localchat @args
exit $LASTEXITCODE
