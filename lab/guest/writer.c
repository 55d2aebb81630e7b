/* The guest's data-proving writer: one per mounted LUN.
 *
 * writer LUN_NAME FILE RECORDS GAP_MS
 *
 * Writes numbered, checksummed 4 KiB records round a ring of RECORDS slots
 * in FILE (O_DIRECT|O_DSYNC: each write is on the target when it returns),
 * and after each write re-reads an older record (O_DIRECT: from the target,
 * not the page cache) and checks it is the one last written there. Every
 * outcome is one line on stdout, written with a single write(2) so that the
 * writers of one guest can share a serial port:
 *   W name seq            write completed
 *   R name seq            older record read back intact
 *   M name seq detail     read back, but not what was written (mismatch)
 *   E name seq op errno   write or read failed (EIO, EROFS ...)
 * The host timestamps the lines as they arrive; the guest's clock is not used.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define RECORD 4096
#define MAGIC 0x5447544841524543ULL /* "TGTHAREC" */

struct header {
    uint64_t magic, seq, slot, checksum;
};

static const char *name;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n > 0)
        (void)!write(1, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

static uint64_t next(uint64_t *x)
{
    *x ^= *x << 13; *x ^= *x >> 7; *x ^= *x << 17;
    return *x;
}

/* The payload is a function of seq: a read-back is checked without a copy. */
static uint64_t fill(unsigned char *buf, uint64_t seq, uint64_t slot)
{
    uint64_t x = seq * 0x9E3779B97F4A7C15ULL + 1, sum = 1469598103934665603ULL;
    uint64_t *words = (uint64_t *)(buf + sizeof(struct header));
    for (size_t i = 0; i < (RECORD - sizeof(struct header)) / 8; i++) {
        words[i] = next(&x);
        sum = (sum ^ words[i]) * 1099511628211ULL;
    }
    struct header h = {MAGIC, seq, slot, sum};
    memcpy(buf, &h, sizeof(h));
    return sum;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: writer NAME FILE RECORDS GAP_MS\n");
        return 2;
    }
    name = argv[1];
    uint64_t records = strtoull(argv[3], NULL, 10);
    long gap_ms = strtol(argv[4], NULL, 10);
    int fd = open(argv[2], O_RDWR | O_CREAT | O_DIRECT | O_DSYNC, 0600);
    if (fd < 0 || records < 2) {
        say("E %s 0 open %d\n", name, errno);
        return 1;
    }
    unsigned char *buf, *back;
    if (posix_memalign((void **)&buf, RECORD, RECORD) || posix_memalign((void **)&back, RECORD, RECORD))
        return 1;
    /* slot -> seq last written there intact (0: never, or its write failed) */
    uint64_t *written = calloc(records, sizeof(uint64_t));
    uint64_t pick = (uint64_t)getpid() * 2654435761ULL + 7;
    struct timespec gap = {gap_ms / 1000, (gap_ms % 1000) * 1000000L};
    for (uint64_t seq = 1;; seq++) {
        uint64_t slot = seq % records;
        fill(buf, seq, slot);
        if (pwrite(fd, buf, RECORD, (off_t)(slot * RECORD)) == RECORD) {
            written[slot] = seq;
            say("W %s %llu\n", name, (unsigned long long)seq);
        } else {
            written[slot] = 0;
            say("E %s %llu write %d\n", name, (unsigned long long)seq, errno);
        }
        uint64_t older = next(&pick) % records;
        if (written[older]) {
            uint64_t expect = written[older];
            if (pread(fd, back, RECORD, (off_t)(older * RECORD)) != RECORD) {
                say("E %s %llu read %d\n", name, (unsigned long long)expect, errno);
            } else {
                fill(buf, expect, older);
                struct header *h = (struct header *)back;
                if (memcmp(back, buf, RECORD) == 0)
                    say("R %s %llu\n", name, (unsigned long long)expect);
                else
                    say("M %s %llu found-seq=%llu magic-ok=%d\n", name, (unsigned long long)expect,
                        (unsigned long long)h->seq, h->magic == MAGIC);
            }
        }
        nanosleep(&gap, NULL);
    }
}
