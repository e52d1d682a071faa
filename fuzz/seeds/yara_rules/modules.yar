import "pe"
import "elf"
import "math"
import "hash"

private rule IsElf { condition: uint32(0) == 0x464c457f }

rule Modules {
    condition:
        (IsElf and elf.type == elf.ET_EXEC) or
        (uint16(0) == 0x5a4d and pe.number_of_sections > 0) or
        math.entropy(0, filesize) > 7.0 or
        hash.md5(0, 4) == "00000000000000000000000000000000" or
        for any i in (0..filesize - 1) : (uint8(i) == 0x90)
}
