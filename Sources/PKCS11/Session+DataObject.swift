import CPKCS11

extension Session {
    /// Creates an object (e.g. a `CKO_DATA` object) from a full template.
    public func createObject(_ template: [Attribute]) throws(PKCS11Error) -> CK_OBJECT_HANDLE {
        var object: CK_OBJECT_HANDLE = 0
        let rv = withTemplate(template) { f.C_CreateObject(handle, $0, $1, &object) }
        guard rv == CKR_OK else { throw .call("C_CreateObject", rv) }
        return object
    }
}
