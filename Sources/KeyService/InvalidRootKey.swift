/// An object labelled like a p11kms root key that the token does not describe as one: not sensitive, extractable,
/// not AES-256, or sharing its `CKA_ID` with another root-key object. It is never used (neither Encrypt nor
/// Decrypt), makes Status unhealthy, and `p11kms keys` lists it as `invalid`. Names the object by label and key_id,
/// never by anything secret.
public struct InvalidRootKey: Sendable, Equatable, CustomStringConvertible {
    public let label: String
    /// nil when the object has no `CKA_ID` of 16 bytes.
    public let id: RootKeyID?
    /// From the label.
    public let generation: Int
    public let createdAt: Int
    /// What is wrong, e.g. "extractable", "not sensitive", "CKA_ID shared with another root key object".
    public let problems: [String]

    public init(label: String, id: RootKeyID?, generation: Int, createdAt: Int, problems: [String]) {
        self.label = label
        self.id = id
        self.generation = generation
        self.createdAt = createdAt
        self.problems = problems
    }

    public var keyID: String? { id?.keyID }

    /// "label (key_id)" or just the label.
    public var name: String { keyID.map { "\(label) (\($0))" } ?? label }

    public var description: String { "root key object \(name) is invalid: \(problems.joined(separator: ", "))" }

    public var createdRFC3339: String { RootKey.rfc3339(createdAt) }
}
