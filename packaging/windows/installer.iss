; Inno Setup script: the Windows installer, trayupdater-setup-<version>.exe.
;   iscc /DAppVersion=1.2.3 /DDistDir=..\..\dist packaging\windows\installer.iss
; Per-user (no admin, no UAC prompt): the app replaces its own exe when it updates
; itself, so it must live in a folder the user can write, not in Program Files.
; The name contains "setup": the app's own asset picker never mistakes it for the app.

#ifndef AppVersion
  #define AppVersion "0.0.0"
#endif
#ifndef DistDir
  #define DistDir "..\..\dist"
#endif

[Setup]
AppId={{6B1F3C52-5E0A-4C3E-9B7E-2A61F0B8D7C4}
AppName=TrayUpdater
AppVersion={#AppVersion}
AppPublisher=trayupdater
DefaultDirName={localappdata}\Programs\TrayUpdater
DefaultGroupName=TrayUpdater
DisableProgramGroupPage=yes
PrivilegesRequired=lowest
OutputDir={#DistDir}
OutputBaseFilename=trayupdater-setup-{#AppVersion}
SetupIconFile=..\..\assets\trayupdater.ico
UninstallDisplayIcon={app}\trayupdater.exe
Compression=lzma2
SolidCompression=yes
WizardStyle=modern
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
; Stop a running copy before overwriting it, and start it again afterwards.
CloseApplications=yes
RestartApplications=no

[Files]
Source: "{#DistDir}\trayupdater.exe"; DestDir: "{app}"; Flags: ignoreversion

[InstallDelete]
; What a self-update leaves when its predecessor was still running at the time.
Type: files; Name: "{app}\trayupdater.exe.old"
Type: files; Name: "{app}\trayupdater.exe.new"

[Icons]
Name: "{autoprograms}\TrayUpdater"; Filename: "{app}\trayupdater.exe"; Parameters: "run"

[Run]
Filename: "{app}\trayupdater.exe"; Parameters: "run"; Description: "Start TrayUpdater now"; Flags: nowait postinstall skipifsilent

[UninstallRun]
Filename: "{app}\trayupdater.exe"; Parameters: "quit"; Flags: runhidden; RunOnceId: "QuitApp"

[UninstallDelete]
Type: files; Name: "{app}\trayupdater.exe.old"
Type: files; Name: "{app}\trayupdater.exe.new"

[Registry]
; The app writes this value itself ("Start at login"); remove it with the app.
Root: HKCU; Subkey: "Software\Microsoft\Windows\CurrentVersion\Run"; ValueName: "trayupdater"; Flags: uninsdeletevalue dontcreatekey
