rule Strings : tag1 {
    meta:
        author = "svm"
        score = 7
    strings:
        $a = "hello" nocase wide ascii
        $b = { 4D 5A ?? 00 [2-8] (03 | 04) }
        $c = /wor(ld|d)s?/ fullword
        $d = "EICAR" xor(1-3)
    condition:
        2 of them and #a < 10 and @c[1] > 0 and filesize < 1MB
}
