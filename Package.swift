// swift-tools-version:6.1
import PackageDescription

/// Settings every target shares: Swift 6 language mode plus the upcoming features our models use.
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "kaizen-egress",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "kaizen-egress", targets: ["kaizen-egress"]),
        // For the libFuzzer package in Fuzz/ (a package of its own, so a normal build never needs libFuzzer).
        .library(name: "FuzzEntries", targets: ["FuzzEntries"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        // HTTP/2 inside inspection: the frame codec, HPACK, flow control and stream channels.
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
        // Property-based tests for the audit log's tamper detection (tests only).
        .package(url: "https://github.com/x-sheep/swift-property-based.git", from: "2.0.1"),
    ],
    targets: [
        // OpenSSL from libssl-dev. Only OpenSSLTLS may import it.
        .systemLibrary(
            name: "CSSL",
            path: "CSSL",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]
        ),
        // The library context of the TLS clients (C: an OpenSSL provider is a table of C functions). Only OpenSSLTLS
        // uses it.
        .target(name: "CSSLClientContext", dependencies: ["CSSL"]),
        // The project's one TLS stack, over system OpenSSL; the only module that imports CSSL.
        .target(
            name: "OpenSSLTLS",
            dependencies: [
                "CSSL",
                "CSSLClientContext",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // HTTP/1.1 heads and bodies parsed in place, strictly (RFC 9112): the inspected path's codec. No I/O.
        .target(
            name: "HTTP1Codec",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),
        // Pure TLS ClientHello parsing: SNI, ALPN, versions. No I/O.
        .target(
            name: "ClientHello",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),
        // The proxy's metrics: every name in one file, the handles, and the Prometheus registry /metrics serves.
        .target(
            name: "Telemetry",
            dependencies: [
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: swiftSettings
        ),
        // The action model and the sinks actions go to (local JSON lines today; the control plane next).
        .target(
            name: "ControlPlane",
            dependencies: [
                "OpenSSLTLS",
                "Telemetry",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Inspection mode's decisions and certificates: the customer CA's checks, minted-leaf cache, which
        // hosts are inspected. No sockets.
        .target(
            name: "Interception",
            dependencies: [
                "OpenSSLTLS",
                "Telemetry",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // Compliance evidence: the hash-chained audit log, its verifier and reports, the destination baseline.
        .target(
            name: "Audit",
            dependencies: [
                "ControlPlane",
                "OpenSSLTLS",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Who may use the proxy and where it may connect: client ranges, proxy credentials, the destination
        // guard against SSRF. Pure: no sockets.
        .target(
            name: "AccessControl",
            swiftSettings: swiftSettings
        ),
        // The control plane's destination policies: parsing, the decision for a destination, and the store that
        // fetches them (ETag) and keeps the last good one on disk.
        .target(
            name: "Policy",
            dependencies: [
                "AccessControl",
                "ControlPlane",
                "OpenSSLTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The proxy: configuration, listener, CONNECT tunnels, plain-HTTP forwarding.
        .target(
            name: "EgressProxy",
            dependencies: [
                "AccessControl",
                "HTTP1Codec",
                "Audit",
                "ClientHello",
                "Policy",
                "ControlPlane",
                "Interception",
                "OpenSSLTLS",
                "Telemetry",
                "CHeapTrim",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The fuzz targets' bodies: the proxy's parsers fed one input each (Fuzz/ runs them under libFuzzer,
        // FuzzCorpusTests replays the seed corpus through them).
        .target(
            name: "FuzzEntries",
            dependencies: [
                "ClientHello",
                "HTTP1Codec",
                "EgressProxy",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // glibc's heap figures and malloc_trim, which Swift's Glibc module does not import (malloc.h).
        .target(name: "CHeapTrim"),
        // prctl for the executable's process hardening (no core dumps, no same-user ptrace): variadic in C.
        .target(name: "CProcessHardening"),
        .executableTarget(
            name: "kaizen-egress",
            dependencies: [
                "CProcessHardening",
                "Audit",
                "EgressProxy",
                "Policy",
                "ControlPlane",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Test helpers shared by test targets (starting programs without Foundation's `Process`); never linked
        // into the proxy.
        .target(
            name: "TestSupport",
            path: "Tests/TestSupport",
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
        .testTarget(
            name: "ClientHelloTests",
            dependencies: ["ClientHello", .product(name: "NIOCore", package: "swift-nio")],
            resources: [.copy("Fixtures")],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "OpenSSLTLSTests",
            dependencies: [
                "OpenSSLTLS",
                "TestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
            ],
            // Raw POSIX socket helpers; see EndToEndTests.
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
        .testTarget(
            name: "InterceptionTests",
            dependencies: [
                "Interception",
                "OpenSSLTLS",
                "TestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "FuzzCorpusTests",
            dependencies: ["FuzzEntries", "TestSupport"],
            resources: [.copy("Corpus")],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "HTTP1CodecTests",
            dependencies: [
                "HTTP1Codec",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "PolicyTests",
            dependencies: ["Policy", "AccessControl"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AccessControlTests",
            dependencies: ["AccessControl"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "AuditTests",
            dependencies: [
                "Audit",
                "ControlPlane",
                "OpenSSLTLS",
                "TestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ControlPlaneTests",
            dependencies: ["ControlPlane"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "EgressProxyTests",
            dependencies: [
                "EgressProxy",
                "HTTP1Codec",
                "Interception",
                "AccessControl",
                "Telemetry",
                "ClientHello",
                "ControlPlane",
                "OpenSSLTLS",
                "Policy",
                "Audit",
                "TestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "EndToEndTests",
            dependencies: [
                "EgressProxy",
                "TestSupport",
                "ControlPlane",
                "OpenSSLTLS",
                "Policy",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            exclude: [
                "origin.py", "control_plane.py", "mitm_client.py", "smuggling_client.py", "smuggling_origin.py",
                "raw_mitm_request.py", "h2_client.py", "h2_origin.py", "connect_after_signal.py", "node_client.js",
                "odd_hello.py", "proxy_tunnel.py",
            ],
            // Raw POSIX socket helpers: sockaddr types resolve through NIO's C shims on clean builds, which
            // MemberImportVisibility would then require importing; this target only keeps ExistentialAny.
            swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
        ),
    ]
)
