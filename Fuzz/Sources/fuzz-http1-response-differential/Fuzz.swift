import FuzzEntries

/// libFuzzer's entry point (built with `swift build --sanitize=fuzzer`, which also supplies `main`).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    FuzzEntries.http1ResponseDifferential(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
