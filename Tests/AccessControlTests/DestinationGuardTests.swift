import AccessControl
import Testing

/// The SSRF guard on its own: every refused range, the IPv6 forms that carry an IPv4 address, exceptions, and
/// the proxy's own listeners.
@Suite struct DestinationGuardTests {
    let guardian = DestinationGuard()

    @Test(arguments: [
        "127.0.0.1", "127.255.0.9", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254",
        "100.64.0.1", "100.127.255.255", "0.0.0.0", "0.1.2.3", "224.0.0.1", "239.255.255.250", "255.255.255.255",
        "240.0.0.1", "198.18.0.1", "192.0.2.10", "::", "::1", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1",
        "fec0::1", "2001:db8::1", "3fff::1", "3fff:fff:ffff::1", "100::1",
        // IPv6 forms that carry a refused IPv4 address.
        "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "::127.0.0.1", "64:ff9b::10.0.0.1",
        "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1", "2002:0a00:0001::", "2001:0:4136:e378:8000:63bf:f5ff:fffe",
        "64:ff9b:1::1", "::2", "::ff", "::8.8.8.8", "::ffff:0:8.8.8.8",
    ])
    func refused(_ text: String) throws {
        let address = try #require(IPAddress(text))
        #expect(guardian.check(address, port: 443, host: text) != nil, "\(text) was allowed")
    }

    @Test(arguments: [
        "93.184.215.14", "1.1.1.1", "8.8.8.8", "172.32.0.1", "172.15.255.255", "100.128.0.1", "192.169.0.1",
        "2606:4700::1111", "2a00:1450:4001:80b::200e", "::ffff:93.184.215.14", "64:ff9b::808:808", "2002:0808:0808::1",
        "2001:0:4136:e378:8000:63bf:f7f7:f7f7",  // Teredo: client 8.8.8.8 (inverted), server 65.54.227.120
    ])
    func allowed(_ text: String) throws {
        let address = try #require(IPAddress(text))
        #expect(guardian.check(address, port: 443, host: text) == nil, "\(text) was refused")
    }

    @Test func reasonsNameTheRangeAndTheEmbeddedAddress() throws {
        #expect(guardian.check(IPAddress("169.254.169.254")!, port: 80, host: "metadata")?.reason == "link-local address 169.254.169.254")
        #expect(guardian.check(IPAddress("::ffff:10.0.0.1")!, port: 80, host: "x")?.reason == "private address ::ffff:10.0.0.1 (IPv4-mapped 10.0.0.1)")
    }

    @Test func aClientThatNamedAHostIsNotToldItsAddress() throws {
        let named = try #require(guardian.check(IPAddress("10.0.0.7")!, port: 443, host: "db.internal"))
        #expect(named.reason == "private address 10.0.0.7")
        #expect(named.clientReason == "db.internal resolves to a refused address (the proxy's log says which)")
        for literal in ["10.0.0.7", "[10.0.0.7]"] {
            #expect(guardian.check(IPAddress("10.0.0.7")!, port: 443, host: literal)?.clientReason == "private address 10.0.0.7")
        }
        #expect(guardian.check(IPAddress("::1")!, port: 443, host: "[::1]")?.clientReason == "loopback address ::1")
    }

    @Test func exceptionsByRangeAndName() throws {
        let open = DestinationGuard(allowedRanges: [CIDR("127.0.0.0/8")!, CIDR("10.1.0.0/16")!], allowedNames: ["internal.example", "*.corp.example"])
        #expect(open.check(IPAddress("127.0.0.1")!, port: 8080, host: "127.0.0.1") == nil)
        #expect(open.check(IPAddress("::ffff:127.0.0.1")!, port: 8080, host: "x") == nil)  // the same address, mapped
        #expect(open.check(IPAddress("10.1.9.9")!, port: 443, host: "x") == nil)
        #expect(open.check(IPAddress("10.2.0.1")!, port: 443, host: "x") != nil)
        #expect(open.check(IPAddress("10.2.0.1")!, port: 443, host: "internal.example") == nil)
        #expect(open.check(IPAddress("10.2.0.1")!, port: 443, host: "api.corp.example") == nil)
        #expect(open.check(IPAddress("10.2.0.1")!, port: 443, host: "corp.example") != nil)
        #expect(open.check(IPAddress("::1")!, port: 443, host: "x") != nil)
    }

    @Test func unspecifiedIsRefusedWhateverTheExceptions() throws {
        // 0.0.0.0 and :: reach the machine's own listeners: an allowed name that resolves there is still refused.
        let open = DestinationGuard(allowedRanges: [CIDR("0.0.0.0/0")!, CIDR("::/0")!], allowedNames: ["*.corp.example"])
        for text in ["0.0.0.0", "::", "::ffff:0.0.0.0"] {
            #expect(open.check(IPAddress(text)!, port: 443, host: "x.corp.example") != nil, "\(text)")
        }
        #expect(open.check(IPAddress("10.0.0.1")!, port: 443, host: "x.corp.example") == nil)
    }

    @Test func ownListenersAreRefusedEvenWhenLoopbackIsAllowed() throws {
        let open = DestinationGuard(
            allowedRanges: [CIDR("127.0.0.0/8")!, CIDR("::1")!, CIDR("192.168.0.0/16")!],
            listeners: [.init(address: IPAddress("127.0.0.1"), port: 8080), .init(address: nil, port: 15001)],
            localAddresses: [IPAddress("192.168.1.5")!]
        )
        #expect(open.check(IPAddress("127.0.0.1")!, port: 8080, host: "x")?.reason.contains("own listener") == true)
        #expect(open.check(IPAddress("127.0.0.2")!, port: 8080, host: "x") != nil)
        #expect(open.check(IPAddress("::ffff:127.0.0.1")!, port: 8080, host: "x") != nil)
        #expect(open.check(IPAddress("127.0.0.1")!, port: 8081, host: "x") == nil)
        #expect(open.check(IPAddress("192.168.1.5")!, port: 15001, host: "x") != nil)
        #expect(open.check(IPAddress("::1")!, port: 15001, host: "x") != nil)
        #expect(open.check(IPAddress("192.168.1.6")!, port: 15001, host: "x") == nil)
    }

    @Test func theMachinesOwnAddressesAreRefusedUnlessAnExceptionCoversThem() throws {
        let own = [IPAddress("192.88.99.1")!, IPAddress("2a00:1450:4001:80b::200e")!]
        let guardian = DestinationGuard(localAddresses: own)
        #expect(guardian.check(IPAddress("192.88.99.1")!, port: 8099, host: "192.88.99.1")?.reason == "this machine's own address 192.88.99.1")
        #expect(guardian.check(IPAddress("::ffff:192.88.99.1")!, port: 8099, host: "x")?.reason
            == "this machine's own address ::ffff:192.88.99.1 (IPv4-mapped 192.88.99.1)")
        #expect(guardian.check(IPAddress("2a00:1450:4001:80b::200e")!, port: 443, host: "x") != nil)
        #expect(guardian.check(IPAddress("192.88.99.2")!, port: 8099, host: "x") == nil)
        #expect(guardian.check(IPAddress("2a00:1450:4001:80b::200f")!, port: 443, host: "x") == nil)
        // A refused range keeps its own reason.
        #expect(DestinationGuard(localAddresses: [IPAddress("10.0.0.5")!]).check(IPAddress("10.0.0.5")!, port: 1, host: "x")?.reason
            == "private address 10.0.0.5")
        let open = DestinationGuard(allowedRanges: [CIDR("192.88.99.0/24")!], allowedNames: ["self.example"], localAddresses: own)
        #expect(open.check(IPAddress("192.88.99.1")!, port: 8099, host: "x") == nil)
        #expect(open.check(IPAddress("2a00:1450:4001:80b::200e")!, port: 443, host: "self.example") == nil)
        #expect(open.check(IPAddress("2a00:1450:4001:80b::200e")!, port: 443, host: "x") != nil)
    }

    @Test func aConnectionWhoseEndsShareTheirAddressReachedTheMachineItself() throws {
        let guardian = DestinationGuard()
        let public4 = IPAddress("192.88.99.7")!
        #expect(guardian.checkConnected(local: public4, remote: public4, port: 80, host: "x")?.reason
            == "this machine's own address 192.88.99.7")
        #expect(guardian.checkConnected(local: IPAddress("::ffff:192.88.99.7")!, remote: public4, port: 80, host: "x") != nil)
        #expect(guardian.checkConnected(local: IPAddress("192.88.99.8")!, remote: public4, port: 80, host: "x") == nil)
        // The exceptions hold: the tests' loopback origins, an allowed name.
        let open = DestinationGuard(allowedRanges: [CIDR("127.0.0.0/8")!], allowedNames: ["self.example"])
        let loopback = IPAddress("127.0.0.1")!
        #expect(open.checkConnected(local: loopback, remote: loopback, port: 80, host: "x") == nil)
        #expect(open.checkConnected(local: public4, remote: public4, port: 80, host: "self.example") == nil)
        #expect(open.checkConnected(local: public4, remote: public4, port: 80, host: "x") != nil)
    }

    @Test func deniedRangesWinOverEveryException() throws {
        let denied = DestinationGuard(
            allowedRanges: [CIDR("0.0.0.0/0")!, CIDR("::/0")!], allowedNames: ["*.corp.example"],
            deniedRanges: [CIDR("2600:1f18:4a2b::/56")!, CIDR("192.88.99.0/24")!])
        #expect(denied.check(IPAddress("2600:1f18:4a2b:7::9")!, port: 443, host: "api.corp.example")?.reason
            == "address 2600:1f18:4a2b:7::9 in KAIZEN_DENY_DESTINATIONS (2600:1f18:4a2b::/56)")
        #expect(denied.check(IPAddress("::ffff:192.88.99.3")!, port: 443, host: "x")?.reason
            == "address ::ffff:192.88.99.3 (IPv4-mapped 192.88.99.3) in KAIZEN_DENY_DESTINATIONS (192.88.99.0/24)")
        #expect(denied.check(IPAddress("2600:1f18:4a2c::9")!, port: 443, host: "x") == nil)
        #expect(denied.check(IPAddress("10.0.0.1")!, port: 443, host: "x") == nil)  // the exceptions still apply elsewhere
        // A range written in its IPv4-mapped form denies the IPv4 destination too.
        let mapped = DestinationGuard(allowedRanges: [CIDR("0.0.0.0/0")!], deniedRanges: [CIDR("::ffff:192.88.99.0/120")!])
        #expect(mapped.check(IPAddress("192.88.99.3")!, port: 443, host: "x") != nil)
        #expect(mapped.check(IPAddress("192.88.98.3")!, port: 443, host: "x") == nil)
        #expect(DestinationGuard(deniedRanges: [CIDR("93.184.215.0/24")!]).check(IPAddress("93.184.215.14")!, port: 443, host: "example.org")?
            .clientReason == "example.org resolves to a refused address (the proxy's log says which)")
    }

    /// Which refusals an exception (`KAIZEN_ALLOW_PRIVATE`) could open: the proxy's log names that setting for
    /// those only, never for its own listeners, the unspecified address or a denied range.
    @Test func aDenialSaysWhetherAnExceptionWouldOpenIt() throws {
        let guardian = DestinationGuard(
            deniedRanges: [CIDR("203.0.113.0/24")!],
            listeners: [.init(address: IPAddress("127.0.0.1"), port: 8080)], localAddresses: [IPAddress("192.88.99.1")!])
        func opens(_ text: String, port: Int = 443) -> Bool? {
            guardian.check(IPAddress(text)!, port: port, host: text)?.exceptionOpens
        }
        #expect(opens("10.0.0.1") == true && opens("169.254.169.254") == true && opens("::ffff:127.0.0.1") == true)
        #expect(opens("192.88.99.1") == true)  // this machine's own address
        #expect(opens("127.0.0.1", port: 8080) == false && opens("0.0.0.0") == false && opens("203.0.113.7") == false)
        #expect(opens("93.184.215.14") == nil)
    }

    @Test func cidrParsing() {
        #expect(CIDR("10.0.0.0/8")?.contains(IPAddress("10.255.1.1")!) == true)
        #expect(CIDR("10.9.9.9/8") == CIDR("10.0.0.0/8"))
        #expect(CIDR("fe80::/10")?.contains(IPAddress("febf::1")!) == true)
        #expect(CIDR("fe80::/10")?.contains(IPAddress("fec0::1")!) == false)
        #expect(CIDR("0.0.0.0/0")?.contains(IPAddress("8.8.8.8")!) == true)
        #expect(CIDR("0.0.0.0/0")?.contains(IPAddress("::1")!) == false)
        // An IPv4-mapped range holds the IPv4 addresses it maps; a wider IPv6 range does not hold IPv4.
        #expect(CIDR("::ffff:127.0.0.0/120")?.contains(IPAddress("127.0.0.2")!) == true)
        #expect(CIDR("::ffff:127.0.0.3")?.contains(IPAddress("127.0.0.3")!) == true)
        #expect(CIDR("::ffff:127.0.0.0/120")?.contains(IPAddress("127.0.1.2")!) == false)
        #expect(CIDR("::ffff:0:0/96")?.contains(IPAddress("8.8.8.8")!) == true)
        #expect(CIDR("::/0")?.contains(IPAddress("8.8.8.8")!) == false)
        #expect(CIDR("64:ff9b::7f00:3")?.contains(IPAddress("127.0.0.3")!) == false)
        for bad in ["10.0.0.0/33", "10.0.0.0/", "10.0.0/8", "::1/129", "example.org", "10.0.0.0/+8", ""] {
            #expect(CIDR(bad) == nil, "\(bad)")
        }
        let list = CIDR.parseList("10.0.0.0/8, [::1], nope ,192.168.0.1")
        #expect(list.ranges.count == 3 && list.invalid == ["nope"])
    }
}
