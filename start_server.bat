@echo off
rem Start the ETL Task API on Windows: set up .venv on first run, then run Uvicorn with
rem ETL_WORKERS worker processes (Gunicorn does not run on Windows).
rem Every setting comes from ETL_* variables or a .env file next to this script (see README).
rem   start_server.bat                 set up if needed, then serve
rem   start_server.bat --install-only  set up (or update) .venv and exit
setlocal
cd /d "%~dp0"

set "VENV=.venv"
if not exist "%VENV%\Scripts\python.exe" (
  echo start_server.bat: creating %VENV%
  py -3 -m venv "%VENV%" 2>nul || python -m venv "%VENV%"
  if errorlevel 1 (
    echo start_server.bat: Python 3.11 or newer is required ^(https://www.python.org/downloads/^)
    exit /b 1
  )
)

rem Reinstall only when requirements.txt changed since the last install.
for /f "delims=" %%H in ('certutil -hashfile requirements.txt SHA256 ^| findstr /v ":"') do if not defined WANTED set "WANTED=%%H"
set "HAVE="
if exist "%VENV%\.requirements.sha256" set /p HAVE=<"%VENV%\.requirements.sha256"
if not "%HAVE%"=="%WANTED%" (
  echo start_server.bat: installing requirements.txt into %VENV%
  "%VENV%\Scripts\python.exe" -m pip install --disable-pip-version-check -q -r requirements.txt
  if errorlevel 1 exit /b 1
  > "%VENV%\.requirements.sha256" echo %WANTED%
)

if "%~1"=="--install-only" exit /b 0
"%VENV%\Scripts\python.exe" -m api serve
