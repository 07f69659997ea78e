import CPKCS11
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A `dlopen`ed PKCS#11 module and its function list, one per module path and process.
///
/// The module is initialised with `CKF_OS_LOCKING_OK` (without it SoftHSM turns its own locking off). PKCS#11 state
/// is process-wide, so every `Token` on the same module shares this object; `reinitialize(ifInitialization:)` finalises
/// and initialises the library again after a device loss (SoftHSM sees a returned token only after that).
///
/// Plainly `Sendable`: the function list is kept by value (a version and C function pointers, all Sendable; the
/// module was initialised with CKF_OS_LOCKING_OK, so its functions may be called from any thread), the initialization and
/// the initialised flag are atomics (read by every call, written only with `lifetime` held exclusively), and the
/// registry of loaded modules is a `Mutex`.
public final class PKCS11Module: Sendable {
    public let path: String
    /// The module's function table (`C_GetFunctionList`), copied: the module never changes it.
    let functions: CK_FUNCTION_LIST
    /// Held shared by every PKCS#11 call, exclusively while the library is re-initialised.
    let lifetime = SharedExclusiveLock()
    private let _initialization = Atomic<UInt64>(1)
    private let initialized = Atomic<Bool>(true)

    /// Modules loaded so far, by path; one load at a time (`dlopen` and `C_Initialize` inside the lock).
    private static let loaded = Mutex<[String: PKCS11Module]>([:])

    /// Loads (once per process) the module at `path` and calls `C_Initialize` with OS locking.
    public static func load(path: String) throws(PKCS11Error) -> PKCS11Module {
        try loaded.withLock { (loaded) throws(PKCS11Error) -> PKCS11Module in
            if let module = loaded[path] { return module }
            let module = try PKCS11Module(path: path)
            loaded[path] = module
            return module
        }
    }

    private init(path: String) throws(PKCS11Error) {
        self.path = path
        guard let handle = dlopen(path, RTLD_NOW | RTLD_LOCAL) else {
            let why = dlerror().map { String(cString: $0) } ?? "dlopen failed"
            throw PKCS11Error(.moduleLoad(why))
        }
        guard let symbol = dlsym(handle, "C_GetFunctionList") else {
            dlclose(handle)
            throw PKCS11Error(.moduleLoad("\(path) has no C_GetFunctionList"))
        }
        typealias GetFunctionList = @convention(c) (UnsafeMutablePointer<UnsafeMutablePointer<CK_FUNCTION_LIST>?>?) -> CK_RV
        let getFunctionList = unsafeBitCast(symbol, to: GetFunctionList.self)
        var list: UnsafeMutablePointer<CK_FUNCTION_LIST>?
        let rv = getFunctionList(&list)
        guard rv == CKR_OK, let list else {
            dlclose(handle)
            throw PKCS11Error.call("C_GetFunctionList", rv)
        }
        self.functions = list.pointee
        // The handle stays open for the life of the process: unloading crypto libraries is not reliably safe.
        do throws(PKCS11Error) {
            try PKCS11Module.initialize(functions)
        } catch {
            dlclose(handle)
            throw error
        }
    }

    private static func initialize(_ functions: CK_FUNCTION_LIST) throws(PKCS11Error) {
        var args = CK_C_INITIALIZE_ARGS()
        args.flags = CK_FLAGS(CKF_OS_LOCKING_OK)
        let rv = withUnsafeMutablePointer(to: &args) { functions.C_Initialize($0) }
        guard rv == CKR_OK || rv == CKR_CRYPTOKI_ALREADY_INITIALIZED else { throw .call("C_Initialize", rv) }
    }

    /// Which `C_Initialize` of the library this is: 1 at load, incremented by every re-initialisation; sessions and
    /// object handles of an older initialization are invalid. (Root keys have generations; the module has
    /// initializations.)
    public var initialization: UInt64 { _initialization.load(ordering: .acquiring) }

    /// `C_Finalize` then `C_Initialize`, unless another caller already did so since `initialization` was read.
    /// Waits for every call in flight to finish first.
    public func reinitialize(ifInitialization seen: UInt64) throws(PKCS11Error) {
        try lifetime.withExclusive { () throws(PKCS11Error) in
            // Writers are serialised by the exclusive hold; the atomics only let readers see the result.
            guard initialization == seen else { return }
            if initialized.load(ordering: .acquiring) { _ = functions.C_Finalize(nil) }
            initialized.store(false, ordering: .releasing)
            _initialization.add(1, ordering: .acquiringAndReleasing)
            try PKCS11Module.initialize(functions)
            initialized.store(true, ordering: .releasing)
        }
    }

    /// Whether the library is initialised (false after a failed re-initialisation).
    public var isInitialized: Bool { initialized.load(ordering: .acquiring) }

    /// The IDs of slots that hold a token.
    public func slotsWithToken() throws(PKCS11Error) -> [CK_SLOT_ID] {
        var count: CK_ULONG = 0
        var rv = functions.C_GetSlotList(CK_BBOOL(CK_TRUE), nil, &count)
        guard rv == CKR_OK else { throw .call("C_GetSlotList", rv) }
        var slots = [CK_SLOT_ID](repeating: 0, count: Int(count))
        rv = slots.withUnsafeMutableBufferPointer { functions.C_GetSlotList(CK_BBOOL(CK_TRUE), $0.baseAddress, &count) }
        guard rv == CKR_OK else { throw .call("C_GetSlotList", rv) }
        return Array(slots.prefix(Int(count)))
    }

    /// The label of the token in `slot`, with the padding spaces removed.
    public func tokenLabel(slot: CK_SLOT_ID) throws(PKCS11Error) -> String {
        var info = CK_TOKEN_INFO()
        let rv = functions.C_GetTokenInfo(slot, &info)
        guard rv == CKR_OK else { throw .call("C_GetTokenInfo", rv) }
        let label = withUnsafeBytes(of: info.label) { String(decoding: $0, as: UTF8.self) }
        return String(label.reversed().drop(while: { $0 == " " || $0 == "\0" }).reversed())
    }

    /// Finds the slot whose token has `label` (slot numbers change after a token is initialised).
    public func slot(forTokenLabel label: String) throws(PKCS11Error) -> CK_SLOT_ID {
        for slot in try slotsWithToken() where (try? tokenLabel(slot: slot)) == label {
            return slot
        }
        throw PKCS11Error(.tokenNotFound(label: label))
    }

    /// Opens a read-write session on `slot`.
    public func openSession(slot: CK_SLOT_ID) throws(PKCS11Error) -> Session {
        var handle: CK_SESSION_HANDLE = 0
        let rv = functions.C_OpenSession(slot, CK_FLAGS(CKF_SERIAL_SESSION | CKF_RW_SESSION), nil, nil, &handle)
        guard rv == CKR_OK else { throw .call("C_OpenSession", rv) }
        return Session(module: self, handle: handle, initialization: initialization)
    }
}
