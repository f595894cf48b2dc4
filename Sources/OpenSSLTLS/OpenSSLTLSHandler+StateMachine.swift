extension OpenSSLTLSHandler {
    /// The life of a TLS channel: handshake, application data, close. Pure: the handler performs the actions.
    struct StateMachine {
        enum State: Equatable {
            /// Added before the channel is active: nothing to do until it is.
            case idle
            case handshaking
            /// The handshake waits for the certificate provider's answer.
            case choosingCertificate
            case active
            /// close_notify sent; waiting for the channel to close.
            case closing
            case closed
        }

        enum Action: Equatable {
            case none
            /// Run the handshake (again) and send what it produced.
            case stepHandshake
            /// Ask the certificate provider for this SNI; the handshake resumes when it answers.
            case chooseCertificate(serverName: String?)
            /// The handshake finished: tell the pipeline, then encrypt the writes held back meanwhile.
            case completeHandshake
            /// Decrypt what arrived and pass it on.
            case decrypt
            /// Hold this write until the handshake is done.
            case bufferWrite
            /// Encrypt this write now.
            case encryptWrite
            /// Send close_notify, then close the channel.
            case sendCloseNotifyAndClose
            /// Close at once (the handshake never finished, or the peer went away).
            case closeNow
            /// Report the error, then close.
            case fail(OpenSSLError)
            /// The transport ended with the session open (no close_notify): tell the pipeline, before the EOF.
            case notePeerClosedWithoutNotify
            /// Send what was written, then close without close_notify.
            case flushAndCloseWithoutNotify
            /// The write cannot be done any more.
            case failWrite
            /// The handshake's gate failed (or the handshake failed behind it): what OpenSSL made for the peer is
            /// dropped unsent, the peer gets a fatal alert of our own, then the error and the close.
            case refuseHandshake(OpenSSLError)
            /// The handshake's gate opened: send what the handshake has made for the peer so far.
            case sendHandshakeOutput
        }

        /// Server with a handshake gate: whether what the handshake makes for the peer is held back (`held`) until
        /// the gate opens. `none` without a gate.
        enum Gate: Equatable {
            case none
            case held
            case opened
        }

        private(set) var state: State = .idle
        private(set) var gate: Gate = .none

        init(gated: Bool = false) {
            gate = gated ? .held : .none
        }

        /// Nothing the handshake made may reach the peer yet.
        var holdsHandshakeOutput: Bool { gate == .held }
        /// The handshake is paused until a certificate is chosen for it.
        var isChoosingCertificate: Bool { state == .choosingCertificate }
        /// The pipeline was told the peer's transport ended without close_notify (once per connection).
        private var notedUncleanClose = false

        mutating func channelActive() -> Action {
            guard state == .idle else { return .none }
            state = .handshaking
            return .stepHandshake
        }

        mutating func bytesArrived() -> Action {
            switch state {
            case .idle:
                state = .handshaking
                return .stepHandshake
            case .handshaking: return .stepHandshake
            // Kept in the connection's input buffer until the certificate is chosen.
            case .choosingCertificate: return .none
            case .active, .closing: return .decrypt
            case .closed: return .none
            }
        }

        mutating func handshakeStepped(_ result: OpenSSLConnection.HandshakeResult) -> Action {
            guard state == .handshaking else { return .none }
            switch result {
            case .incomplete:
                return .none
            case .needsCertificate(let serverName):
                state = .choosingCertificate
                return .chooseCertificate(serverName: serverName)
            case .complete where gate == .held:
                // A server cannot finish before the peer has its Finished, which the gate holds: never expected.
                state = .closed
                return .refuseHandshake(OpenSSLError(operation: "completing the handshake", entries: ["finished behind a closed gate"]))
            case .complete:
                state = .active
                return .completeHandshake
            case .failed(let error):
                state = .closed
                // Behind a closed gate OpenSSL's alert may follow a flight the peer must not see: ours goes alone.
                return gate == .held ? .refuseHandshake(error) : .fail(error)
            }
        }

        mutating func gateOpened() -> Action {
            guard gate == .held else { return .none }
            gate = .opened
            switch state {
            case .idle, .handshaking, .choosingCertificate: return .sendHandshakeOutput
            case .active, .closing, .closed: return .none
            }
        }

        /// The gate opened asking for the handshake to be made again (with a new connection, from the start): it runs
        /// with the gate open.
        mutating func restartOpened() -> Action {
            guard gate == .held else { return .none }
            switch state {
            case .idle, .handshaking, .choosingCertificate:
                gate = .opened
                state = .handshaking
                return .stepHandshake
            case .active, .closing, .closed:
                return .none
            }
        }

        mutating func gateFailed(_ error: OpenSSLError) -> Action {
            guard gate == .held else { return .none }
            switch state {
            case .idle, .handshaking, .choosingCertificate:
                state = .closed
                return .refuseHandshake(error)
            case .active, .closing, .closed:
                return .none
            }
        }

        /// The provider answered (the handler has given the answer to the connection).
        mutating func certificateChosen() -> Action {
            guard state == .choosingCertificate else { return .none }
            state = .handshaking
            return .stepHandshake
        }

        mutating func peerClosed() -> Action {
            switch state {
            case .handshaking where gate == .held:
                state = .closed
                return .closeNow
            case .active, .handshaking:
                state = .closing
                return .sendCloseNotifyAndClose
            case .choosingCertificate:
                state = .closed
                return .closeNow
            case .closing, .idle, .closed:
                return .none
            }
        }

        mutating func readFailed(_ error: OpenSSLError) -> Action {
            guard state != .closed else { return .none }
            let handshaking = state != .active && state != .closing
            state = .closed
            return handshaking && gate == .held ? .refuseHandshake(error) : .fail(error)
        }

        mutating func write() -> Action {
            switch state {
            case .idle, .handshaking, .choosingCertificate: return .bufferWrite
            case .active: return .encryptWrite
            case .closing, .closed: return .failWrite
            }
        }

        mutating func close() -> Action {
            switch state {
            case .active:
                state = .closing
                return .sendCloseNotifyAndClose
            case .idle, .handshaking, .choosingCertificate:
                state = .closed
                return .closeNow
            case .closing, .closed:
                return .closeNow
            }
        }

        /// The peer's transport sent EOF (half-closure allowed), or the channel went inactive. Either while the
        /// session is open means no close_notify came first: whatever ended with the connection may be cut short.
        mutating func transportEnded() -> Action {
            guard state == .active, !notedUncleanClose else { return .none }
            notedUncleanClose = true
            return .notePeerClosedWithoutNotify
        }

        /// Close without close_notify, so the peer cannot take the end of the connection for the end of the data.
        mutating func closeWithoutNotify() -> Action {
            switch state {
            case .active:
                state = .closed
                return .flushAndCloseWithoutNotify
            case .idle, .handshaking, .choosingCertificate, .closing:
                state = .closed
                return .closeNow
            case .closed:
                return .closeNow
            }
        }

        mutating func channelInactive() -> Action {
            let action = transportEnded()
            state = .closed
            return action
        }
    }
}
