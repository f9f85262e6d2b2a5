/**
 * CRC32c (Castagnoli), as PP2_TYPE_CRC32C uses it: doc/proxy-protocol.txt §2.2.3 points to RFC 4960
 * Appendix B (reflected polynomial 0x82F63B78, initial value and final XOR 0xFFFFFFFF). Check value:
 * crc32c("123456789") = 0xE3069283 (RFC 3720 §B.4 lists more vectors).
 */

const TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/**
 * CRC32c of `data`, as an unsigned 32-bit number. `zeroAt` is the offset of 4 bytes counted as zeros
 * (the checksum field itself, §2.2.3: "replace the 32 bits of the checksum field … with all '0's"),
 * so the receiver need not copy the header.
 */
export function crc32c(data: Uint8Array, zeroAt = -1): number {
  let c = 0xffffffff;
  for (let i = 0; i < data.length; i++) {
    const byte = i >= zeroAt && i < zeroAt + 4 && zeroAt >= 0 ? 0 : data[i]!;
    c = TABLE[(c ^ byte) & 0xff]! ^ (c >>> 8);
  }
  return (c ^ 0xffffffff) >>> 0;
}
