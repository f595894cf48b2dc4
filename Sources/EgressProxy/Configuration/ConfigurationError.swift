/// A configuration value the proxy cannot start with. Its description is the one line printed before exiting
/// with status 2: the variable, what is wrong with the value, and how to fix it. Secret values are never quoted.
public struct ConfigurationError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The variable at fault (e.g. `PORT`).
    public var variable: String
    public var description: String

    public init(variable: String, _ description: String) {
        self.variable = variable
        self.description = description
    }
}
