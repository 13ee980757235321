import CRolloutCrypto

/// Hex SHA-1 of the UTF-8 bytes, as Redis names cached scripts.
func sha1Hex(_ text: String) -> String {
    var digest = [UInt8](repeating: 0, count: 20)
    var length: UInt32 = 0
    let bytes = Array(text.utf8)
    _ = bytes.withUnsafeBytes { raw in
        EVP_Digest(raw.baseAddress, raw.count, &digest, &length, EVP_sha1(), nil)
    }
    let hex: [Character] = Array("0123456789abcdef")
    var result = ""
    for byte in digest {
        result.append(hex[Int(byte >> 4)])
        result.append(hex[Int(byte & 0x0f)])
    }
    return result
}
