internal import CSSL

/// Message digests from the system OpenSSL, so the audit log's hash chain uses the same crypto library as TLS.
public enum OpenSSLDigest {
    /// SHA-256, fetched once: `EVP_sha256()` makes OpenSSL 3 look the algorithm up again on every digest (a third
    /// of the cost of hashing an audit line). Owned by the process; fetched algorithms are safe to share between
    /// threads.
    private nonisolated(unsafe) static let sha256Algorithm: OpaquePointer = {
        guard let algorithm = EVP_MD_fetch(nil, "SHA256", nil) else { fatalError("OpenSSL has no SHA256") }
        return algorithm
    }()

    /// The SHA-256 of `bytes`: 32 bytes.
    public static func sha256(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        let ok = digest.withUnsafeMutableBufferPointer { out in
            EVP_Digest(bytes.baseAddress, bytes.count, out.baseAddress, &length, sha256Algorithm, nil)
        }
        // EVP_Digest with a built-in algorithm fails only when memory runs out.
        precondition(ok == 1 && length == 32, "EVP_Digest(SHA-256) failed")
        return digest
    }

    /// The SHA-256 of `bytes`: 32 bytes.
    public static func sha256<Bytes: Collection<UInt8>>(_ bytes: Bytes) -> [UInt8] {
        if let digest = bytes.withContiguousStorageIfAvailable({ sha256(UnsafeRawBufferPointer($0)) }) {
            return digest
        }
        return Array(bytes).withUnsafeBytes { sha256($0) }
    }
}
