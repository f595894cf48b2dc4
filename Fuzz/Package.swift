// swift-tools-version:6.1
// libFuzzer targets for the proxy's parsers. A package of its own, so that `swift build` at the root never
// needs libFuzzer: build it with `swift build --sanitize=fuzzer` here, or run `scripts/fuzz.sh` at the root.
import Foundation
import PackageDescription

/// SwiftPM names a path dependency after its directory: the checkout's, whatever it is called.
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
let rootIdentity = root.lastPathComponent.lowercased()

func fuzzTarget(_ name: String) -> Target {
    .executableTarget(
        name: name,
        dependencies: [.product(name: "FuzzEntries", package: rootIdentity)],
        swiftSettings: [.enableUpcomingFeature("ExistentialAny")]
    )
}

let package = Package(
    name: "kaizen-egress-fuzz",
    platforms: [.macOS(.v15)],
    dependencies: [.package(path: root.path)],
    targets: [
        fuzzTarget("fuzz-clienthello"), fuzzTarget("fuzz-request-head"), fuzzTarget("fuzz-connect-authority"),
        fuzzTarget("fuzz-http1-differential"), fuzzTarget("fuzz-http1-response-differential"),
    ]
)
