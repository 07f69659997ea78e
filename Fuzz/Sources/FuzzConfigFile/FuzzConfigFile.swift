import ConfigFile
import FuzzDriver

/// The config file parser (`--config`, YAML or JSON): any bytes give settings or a ConfigFileError, never a crash.
/// Every key returned is a known setting, and octal modes parse only to permission bits.
func fuzzConfigFile(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: count))
    guard let settings = try? ConfigFile.parse(bytes, path: "fuzz.yaml") else { return 0 }
    for (key, value) in settings {
        guard let entry = SettingKeys.entry(key) else { preconditionFailure("unknown key \(key) accepted") }
        if entry.kind == .octalMode, let mode = SettingKeys.octalMode(value) {
            precondition(mode <= 0o777)
            precondition(SettingKeys.octalMode(SettingKeys.octalText(mode)) == mode)
        }
    }
    return 0
}

@_cdecl("FuzzConfigFile_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    p11kms_fuzz_run(argc, argv, fuzzConfigFile)
}
