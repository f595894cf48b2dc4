public import OpenSSLTLS

/// Where the inspection CA sits in a trust store the proxy's own TLS clients read, for `ca doctor`.
public enum InspectionCATrust {
    /// What the proxy's start warns about the trust stores its TLS clients would read with this environment (the
    /// default store as `SSL_CERT_FILE`/`SSL_CERT_DIR` name it, `upstreamCAFile`, `apiCAFile`): one line per place
    /// that holds the inspection CA `ca`. The same lines, from the same checks (`Inspection.distrustWarnings`).
    public static func warnings(ca: OpenSSLCertificate, upstreamCAFile: String?, apiCAFile: String?) -> [String] {
        var upstream = OpenSSLContext.Configuration(role: .client)
        upstream.additionalTrustFile = upstreamCAFile
        return Inspection.distrustWarnings(upstream, ca: ca)
            + [Inspection.controlPlaneDistrustWarning(apiCAFile: apiCAFile, ca: ca)].compactMap { $0 }
    }
}
