// An independent phone for finlock protocol v2, written from docs/lock-pipeline.md alone, that runs the
// published test vectors:
//
//     java conformance/java/Conformance.java docs/protocol/vectors
//
// Java 17, JDK only, one file (single-file source launch). Ed25519 through java.security, strict base64
// through java.util.Base64 plus a re-encode check, the lock window through java.time, and a small strict
// JSON parser of its own. It never serialises JSON: it verifies the signature over the decoded payload
// bytes, and only then parses them; "same" compares bytes. Prints PASS/FAIL per case; exits 1 on any FAIL.

import java.io.IOException;
import java.math.BigDecimal;
import java.math.BigInteger;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyFactory;
import java.security.PublicKey;
import java.security.Signature;
import java.security.spec.X509EncodedKeySpec;
import java.time.DateTimeException;
import java.time.Instant;
import java.time.LocalDate;
import java.time.LocalDateTime;
import java.time.ZoneOffset;
import java.time.ZoneId;
import java.time.ZonedDateTime;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Base64;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Set;
import java.util.TreeMap;
import java.util.regex.Pattern;
import java.util.stream.Collectors;
import java.util.stream.Stream;

public class Conformance {

    static final int MAX_ENVELOPE_BYTES = 32768;
    static final BigInteger MAX_SEQ = BigInteger.valueOf(2_000_000_000L);
    static final Set<String> STATES = Set.of("unlocked", "reminder", "locked", "temp_unlocked", "released");
    static final Set<String> LEASE_EXPIRY_STATES = Set.of("reminder", "locked");
    /** The states a command may carry a lease in; a lease on a locked or released command is malformed. */
    static final Set<String> LEASED_STATES = Set.of("unlocked", "reminder", "temp_unlocked");
    static final BigInteger MAX_WARNING_DAYS = BigInteger.valueOf(365);
    /** Where an ended temporary unlock with no command before it falls: usable, urging a check-in. */
    static final String TEMP_FALLBACK_STATE = "reminder";
    static final byte[] SPKI_PREFIX = hex("302a300506032b6570032100");
    static final Pattern TIME = Pattern.compile("\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}Z");
    static final Pattern B64 = Pattern.compile("[A-Za-z0-9+/]*={0,2}");
    /** JSON null, kept apart from "member absent". */
    static final Object NULL = new Object() {
        @Override
        public String toString() {
            return "null";
        }
    };

    // ---------------------------------------------------------------- a strict JSON parser (RFC 8259)

    static final class Json {
        private final String s;
        private int i;

        private Json(String s) {
            this.s = s;
        }

        /** The value of the whole text; Map, List, String, BigInteger (integers), BigDecimal, Boolean or NULL. */
        static Object parse(String text) {
            Json p = new Json(text);
            p.ws();
            Object v = p.value(0);
            p.ws();
            if (p.i != text.length()) throw new IllegalArgumentException("trailing data at " + p.i);
            return v;
        }

        private void ws() {
            while (i < s.length() && " \t\r\n".indexOf(s.charAt(i)) >= 0) i++;
        }

        private char peek() {
            if (i >= s.length()) throw new IllegalArgumentException("unexpected end");
            return s.charAt(i);
        }

        private void expect(String word) {
            if (!s.startsWith(word, i)) throw new IllegalArgumentException("expected " + word + " at " + i);
            i += word.length();
        }

        private Object value(int depth) {
            if (depth > 64) throw new IllegalArgumentException("nested too deep");
            char c = peek();
            switch (c) {
                case '{': return object(depth);
                case '[': return array(depth);
                case '"': return string();
                case 't': expect("true"); return Boolean.TRUE;
                case 'f': expect("false"); return Boolean.FALSE;
                case 'n': expect("null"); return NULL;
                default: return number();
            }
        }

        private Map<String, Object> object(int depth) {
            Map<String, Object> out = new LinkedHashMap<>();
            i++;
            ws();
            if (peek() == '}') { i++; return out; }
            while (true) {
                ws();
                if (peek() != '"') throw new IllegalArgumentException("expected a member name at " + i);
                String key = string();
                ws();
                expect(":");
                ws();
                out.put(key, value(depth + 1));
                ws();
                char c = peek();
                i++;
                if (c == '}') return out;
                if (c != ',') throw new IllegalArgumentException("expected , or } at " + (i - 1));
            }
        }

        private List<Object> array(int depth) {
            List<Object> out = new ArrayList<>();
            i++;
            ws();
            if (peek() == ']') { i++; return out; }
            while (true) {
                ws();
                out.add(value(depth + 1));
                ws();
                char c = peek();
                i++;
                if (c == ']') return out;
                if (c != ',') throw new IllegalArgumentException("expected , or ] at " + (i - 1));
            }
        }

        private String string() {
            StringBuilder b = new StringBuilder();
            i++;
            while (true) {
                char c = peek();
                i++;
                if (c == '"') return b.toString();
                if (c < 0x20) throw new IllegalArgumentException("raw control character in a string");
                if (c != '\\') { b.append(c); continue; }
                char e = peek();
                i++;
                switch (e) {
                    case '"': b.append('"'); break;
                    case '\\': b.append('\\'); break;
                    case '/': b.append('/'); break;
                    case 'b': b.append('\b'); break;
                    case 'f': b.append('\f'); break;
                    case 'n': b.append('\n'); break;
                    case 'r': b.append('\r'); break;
                    case 't': b.append('\t'); break;
                    case 'u':
                        if (i + 4 > s.length()) throw new IllegalArgumentException("short \\u escape");
                        String hex = s.substring(i, i + 4);
                        if (!hex.matches("[0-9A-Fa-f]{4}")) throw new IllegalArgumentException("bad \\u escape");
                        // UTF-16 code units: an escaped surrogate pair becomes the pair it names.
                        b.append((char) Integer.parseInt(hex, 16));
                        i += 4;
                        break;
                    default: throw new IllegalArgumentException("bad escape \\" + e);
                }
            }
        }

        private static final Pattern NUMBER = Pattern.compile("-?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][+-]?[0-9]+)?");

        private Object number() {
            int start = i;
            while (i < s.length() && "+-0123456789.eE".indexOf(s.charAt(i)) >= 0) i++;
            String text = s.substring(start, i);
            if (!NUMBER.matcher(text).matches()) throw new IllegalArgumentException("bad value at " + start);
            // Only a literal without fraction or exponent is an integer: 2.0 and 2e0 are not the integer 2.
            if (text.matches("-?(0|[1-9][0-9]*)")) return new BigInteger(text);
            return new BigDecimal(text);
        }
    }

    // ---------------------------------------------------------------- encodings and signatures

    static final class Rejected extends Exception {
        final String code;

        Rejected(String code, String why) {
            super(code + ": " + why);
            this.code = code;
        }
    }

    static byte[] hex(String h) {
        byte[] out = new byte[h.length() / 2];
        for (int k = 0; k < out.length; k++) out[k] = (byte) Integer.parseInt(h.substring(2 * k, 2 * k + 2), 16);
        return out;
    }

    /** Standard base64 with padding only: the JDK decoder, then the text must be exactly what it re-encodes to. */
    static byte[] unb64(String text) {
        if (!B64.matcher(text).matches()) throw new IllegalArgumentException("not the standard alphabet");
        byte[] data = Base64.getDecoder().decode(text);
        if (!Base64.getEncoder().encodeToString(data).equals(text)) {
            throw new IllegalArgumentException("missing padding or non-zero trailing bits");
        }
        return data;
    }

    static PublicKey publicKey(String b64) throws Exception {
        byte[] raw = unb64(b64);
        if (raw.length != 32) throw new IllegalArgumentException("a public key is 32 bytes");
        byte[] spki = new byte[SPKI_PREFIX.length + 32];
        System.arraycopy(SPKI_PREFIX, 0, spki, 0, SPKI_PREFIX.length);
        System.arraycopy(raw, 0, spki, SPKI_PREFIX.length, 32);
        return KeyFactory.getInstance("Ed25519").generatePublic(new X509EncodedKeySpec(spki));
    }

    static boolean verifies(String keyB64, byte[] body, byte[] signature) {
        if (signature.length != 64) return false;
        try {
            Signature verifier = Signature.getInstance("Ed25519");
            verifier.initVerify(publicKey(keyB64));
            verifier.update(body);
            return verifier.verify(signature);
        } catch (Exception e) {
            return false;
        }
    }

    static String utf8Strict(byte[] bytes) throws CharacterCodingException {
        return StandardCharsets.UTF_8.newDecoder()
                .onMalformedInput(CodingErrorAction.REPORT)
                .onUnmappableCharacter(CodingErrorAction.REPORT)
                .decode(ByteBuffer.wrap(bytes))
                .toString();
    }

    /**
     * A wire time: exactly YYYY-MM-DDTHH:MM:SSZ with a real date, year 0001-9999, hour 00-23, second 00-59.
     * Not Instant.parse, which takes 24:00:00 and a leap second 23:59:60 that the spec refuses.
     */
    static Instant time(Object value) {
        if (!(value instanceof String text) || !TIME.matcher(text).matches()) {
            throw new IllegalArgumentException("not a YYYY-MM-DDTHH:MM:SSZ time: " + value);
        }
        int year = Integer.parseInt(text.substring(0, 4));
        if (year < 1) throw new IllegalArgumentException("year 0000");
        try {
            return LocalDateTime.of(year, Integer.parseInt(text.substring(5, 7)), Integer.parseInt(text.substring(8, 10)),
                    Integer.parseInt(text.substring(11, 13)), Integer.parseInt(text.substring(14, 16)),
                    Integer.parseInt(text.substring(17, 19))).toInstant(ZoneOffset.UTC);
        } catch (DateTimeException e) {
            throw new IllegalArgumentException("not a real date and time: " + text);
        }
    }

    /** The IANA zone named, or UTC for anything the JDK's tz database does not list (never malformed). */
    static ZoneId zoneOf(Object value) {
        if (value instanceof String name && ZoneId.getAvailableZoneIds().contains(name)) return ZoneId.of(name);
        return ZoneOffset.UTC;
    }

    static Instant timeOrNull(Object value) {
        return value == null || value == NULL ? null : time(value);
    }

    // ---------------------------------------------------------------- the phone

    /** A verified command: its exact bytes and what the phone reads from them. */
    record Command(byte[] bytes, Map<String, Object> members, long seq, String state, Instant issuedAt,
                   Instant expiresAt, Instant leaseUntil, String expiryState, long warningDays, ZoneId zone,
                   Map<String, Object> window) {

        static Command of(byte[] bytes, Map<String, Object> m) throws Rejected {
            try {
                Object lease = m.get("lease_until");
                Object window = m.get("lock_window");
                Object warning = m.get("lease_warning_days");
                return new Command(bytes, m, ((BigInteger) m.get("seq")).longValueExact(), (String) m.get("state"),
                        time(m.get("issued_at")), timeOrNull(m.get("expires_at")), timeOrNull(lease),
                        m.get("lease_expiry_state") instanceof String e ? e : null,
                        warning instanceof BigInteger w ? w.longValueExact() : 0,
                        zoneOf(m.get("time_zone")),
                        window instanceof Map<?, ?> w ? castMap(w) : null);
            } catch (RuntimeException e) {
                throw new Rejected("malformed", "unreadable member: " + e.getMessage());
            }
        }

        Command withState(String other) {
            return new Command(bytes, members, seq, other, issuedAt, expiresAt, leaseUntil, expiryState, warningDays,
                    zone, window);
        }
    }

    @SuppressWarnings("unchecked")
    static Map<String, Object> castMap(Object o) {
        return (Map<String, Object>) o;
    }

    record Shown(String state, boolean warning) {
    }

    static final class Phone {
        final String device;
        final List<String> imeis;
        Map<String, String> trusted;
        long keyStatementSeq;
        long lastSeq;
        Command current;
        Command previous;  // what a temp_unlocked falls back to when it expires
        Instant anchorTime;
        long anchorMonotonic;
        Instant grantUntil;  // an offline code's "usable until"

        Phone(Map<String, Object> p, long monotonic) throws Rejected {
            device = (String) p.get("device");
            imeis = ((List<?>) p.get("imeis")).stream().map(Object::toString).collect(Collectors.toList());
            trusted = new TreeMap<>();
            castMap(p.get("trusted_keys")).forEach((k, v) -> trusted.put(k, (String) v));
            keyStatementSeq = ((BigInteger) p.get("key_statement_seq")).longValueExact();
            lastSeq = ((BigInteger) p.get("last_seq")).longValueExact();
            if (p.get("in_force") instanceof Map<?, ?> inForce) {
                byte[] bytes = unb64((String) inForce.get("payload"));
                try {
                    current = Command.of(bytes, castMap(Json.parse(utf8Strict(bytes))));
                } catch (CharacterCodingException e) {
                    throw new IllegalStateException("in_force is not UTF-8");
                }
                anchorTime = current.issuedAt();
                anchorMonotonic = monotonic;
            }
        }

        /** Trusted time only moves forward: re-anchor at the later of issuedAt and trusted time now. */
        void anchorForward(Instant issuedAt, long monotonic) {
            if (anchorTime != null && issuedAt.isBefore(trustedNow(monotonic))) {
                anchorTime = trustedNow(monotonic);
            } else {
                anchorTime = issuedAt;
            }
            anchorMonotonic = monotonic;
        }

        /** Envelope checks 1-5 of the spec, in its order; the parsed payload and its bytes, or Rejected. */
        Object[] open(Object envelope, String kind) throws Rejected {
            if (envelope instanceof String text) {
                if (text.getBytes(StandardCharsets.UTF_8).length > MAX_ENVELOPE_BYTES) {
                    throw new Rejected("too_large", "over 32768 bytes");
                }
                try {
                    envelope = Json.parse(text);
                } catch (RuntimeException e) {
                    throw new Rejected("malformed", "envelope is not JSON: " + e.getMessage());
                }
            }
            if (!(envelope instanceof Map<?, ?> env)) throw new Rejected("malformed", "envelope is not an object");
            if (!(env.get("v") instanceof BigInteger v) || !v.equals(BigInteger.TWO)) {
                throw new Rejected("unknown_version", "v is " + env.get("v"));
            }
            if (!(env.get("key_id") instanceof String keyId) || !(env.get("payload") instanceof String payload)
                    || !(env.get("signature") instanceof String signature)) {
                throw new Rejected("malformed", "key_id, payload and signature must be strings");
            }
            if (!trusted.containsKey(keyId)) throw new Rejected("unknown_key", "key " + keyId);
            byte[] body;
            byte[] sig;
            try {
                body = unb64(payload);
                sig = unb64(signature);
            } catch (IllegalArgumentException e) {
                throw new Rejected("malformed", "base64: " + e.getMessage());
            }
            if (!verifies(trusted.get(keyId), body, sig)) throw new Rejected("bad_signature", "does not verify");
            Object parsed;
            try {
                parsed = Json.parse(utf8Strict(body));  // only now, after the signature verified
            } catch (CharacterCodingException | RuntimeException e) {
                throw new Rejected("malformed", "payload is not UTF-8 JSON: " + e.getMessage());
            }
            if (!(parsed instanceof Map<?, ?> members)) throw new Rejected("malformed", "payload is not an object");
            if (!kind.equals(members.get("kind"))) throw new Rejected("wrong_kind", "kind " + members.get("kind"));
            return new Object[] {castMap(members), body};
        }

        String receiveCommand(Object envelope, long monotonic) {
            try {
                Object[] opened = open(envelope, "command");
                Map<String, Object> m = castMap(opened[0]);
                byte[] bytes = (byte[]) opened[1];
                checkCommand(m);
                if (!device.equals(m.get("device"))
                        || ((List<?>) m.get("imeis")).stream().noneMatch(imeis::contains)) {
                    return "other_device";
                }
                long seq = ((BigInteger) m.get("seq")).longValueExact();
                if (seq < lastSeq) return "stale";
                if (seq == lastSeq) {
                    if (current == null || !Arrays.equals(current.bytes(), bytes)) return "stale";
                    anchorForward(current.issuedAt(), monotonic);
                    return "same";
                }
                if (current != null && current.state().equals("released") && !"released".equals(m.get("state"))) {
                    return "released_final";
                }
                Command next = Command.of(bytes, m);
                if (!next.state().equals("temp_unlocked") || current == null
                        || !current.state().equals("temp_unlocked")) {
                    previous = current;
                }
                current = next;
                lastSeq = seq;
                anchorForward(next.issuedAt(), monotonic);
                return "apply";
            } catch (Rejected r) {
                return r.code;
            }
        }

        static void checkCommand(Map<String, Object> m) throws Rejected {
            if (!(m.get("seq") instanceof BigInteger seq) || seq.signum() <= 0 || seq.compareTo(MAX_SEQ) > 0) {
                throw new Rejected("malformed", "seq is an integer from 1 to MAX_SEQ");
            }
            if (!(m.get("state") instanceof String state) || !STATES.contains(state)) {
                throw new Rejected("malformed", "unknown state");
            }
            if (!(m.get("device") instanceof String) || !(m.get("imeis") instanceof List<?> l) || l.isEmpty()) {
                throw new Rejected("malformed", "device and imeis");
            }
            boolean temp = state.equals("temp_unlocked");
            try {
                time(m.get("issued_at"));
                if (temp) time(m.get("expires_at"));
            } catch (IllegalArgumentException e) {
                throw new Rejected("malformed", e.getMessage());
            }
            if (!temp && absent(m.get("expires_at")) != null) {
                throw new Rejected("malformed", "expires_at is for temp_unlocked only");
            }
            Object lease = absent(m.get("lease_until"));
            if (lease != null) {
                try {
                    time(lease);
                } catch (IllegalArgumentException e) {
                    throw new Rejected("malformed", "lease_until: " + e.getMessage());
                }
                if (!LEASED_STATES.contains(state)) throw new Rejected("malformed", "a " + state + " command has no lease");
                if (!LEASE_EXPIRY_STATES.contains(m.get("lease_expiry_state"))) {
                    throw new Rejected("malformed", "a lease names the state it expires into");
                }
            }
            if (!(m.get("lease_warning_days") instanceof BigInteger w) || w.signum() < 0
                    || w.compareTo(MAX_WARNING_DAYS) > 0) {
                throw new Rejected("malformed", "lease_warning_days is an integer from 0 to 365");
            }
            checkWindow(absent(m.get("lock_window")));
        }

        /** JSON null and an absent member alike as Java null; anything else as itself. */
        static Object absent(Object value) {
            return value == NULL ? null : value;
        }

        static void checkWindow(Object window) throws Rejected {
            if (window == null) return;
            if (!(window instanceof Map<?, ?> w)) throw new Rejected("malformed", "lock_window is an object or null");
            if (!(w.get("start_hour") instanceof BigInteger start) || !(w.get("end_hour") instanceof BigInteger end)
                    || start.signum() < 0 || start.compareTo(end) >= 0 || end.compareTo(BigInteger.valueOf(24)) > 0) {
                throw new Rejected("malformed", "lock_window hours: 0 <= start_hour < end_hour <= 24");
            }
            if (!(w.get("weekdays") instanceof List<?> days) || days.isEmpty() || !days.stream().allMatch(
                    d -> d instanceof BigInteger day && day.signum() >= 0 && day.compareTo(BigInteger.valueOf(6)) <= 0)) {
                throw new Rejected("malformed", "lock_window weekdays: a non-empty array of 0 (Monday) to 6");
            }
        }

        String receiveKeyStatement(Object envelope) {
            try {
                Map<String, Object> m = castMap(open(envelope, "key_statement")[0]);
                if (!(m.get("seq") instanceof BigInteger seq) || seq.signum() <= 0 || seq.compareTo(MAX_SEQ) > 0) {
                    throw new Rejected("malformed", "seq is an integer from 1 to MAX_SEQ");
                }
                if (seq.compareTo(BigInteger.valueOf(keyStatementSeq)) <= 0) return "stale";
                if (!(m.get("keys") instanceof Map<?, ?> keys) || keys.isEmpty()) {
                    throw new Rejected("malformed", "no keys");
                }
                Map<String, String> next = new TreeMap<>();
                for (Map.Entry<?, ?> e : keys.entrySet()) {
                    try {
                        publicKey((String) e.getValue());
                    } catch (Exception ex) {
                        throw new Rejected("malformed", "key " + e.getKey() + " is not 32 bytes of base64");
                    }
                    next.put((String) e.getKey(), (String) e.getValue());
                }
                trusted = next;
                keyStatementSeq = seq.longValueExact();
                return "apply";
            } catch (Rejected r) {
                return r.code;
            }
        }

        Instant trustedNow(long monotonic) {
            return anchorTime.plusSeconds(monotonic - anchorMonotonic);
        }

        void offlineCode(int days, long monotonic) {
            grantUntil = trustedNow(monotonic).plusSeconds(days * 86_400L);
        }

        Shown shows(long monotonic) {
            return effective(current, previous, trustedNow(monotonic));
        }

        Shown effective(Command c, Command before, Instant now) {
            if (c == null) throw new IllegalStateException("no command in force: the spec says nothing to show");
            if (c.state().equals("released")) return new Shown("released", false);
            if (c.state().equals("temp_unlocked")) {
                if (now.isBefore(c.expiresAt())) return new Shown("temp_unlocked", false);
                // Then what the command before it showed; with none, a reminder under this command's own lease.
                return effective(before != null ? before : c.withState(TEMP_FALLBACK_STATE), null, now);
            }
            if (grantUntil != null && now.isBefore(grantUntil)) return new Shown("unlocked", false);
            if (c.leaseUntil() == null) return new Shown(c.state(), false);
            Instant lease = grantUntil != null && grantUntil.isAfter(c.leaseUntil()) ? grantUntil : c.leaseUntil();
            if (now.isBefore(lease.minusSeconds(c.warningDays() * 86_400L))) return new Shown(c.state(), false);
            if (now.isBefore(lease)) return new Shown(c.state(), true);
            if ("reminder".equals(c.expiryState())) return new Shown("reminder", false);
            Instant lockAt = c.window() == null ? lease : firstInWindow(lease, c.zone(), c.window());
            if (lockAt != null && !now.isBefore(lockAt)) return new Shown("locked", false);
            return new Shown("reminder", true);
        }
    }

    /** The first instant at or after {@code from} inside the lock window, in local time of {@code zone}. */
    static Instant firstInWindow(Instant from, ZoneId zone, Map<String, Object> window) {
        int start = ((BigInteger) window.get("start_hour")).intValueExact();
        int end = ((BigInteger) window.get("end_hour")).intValueExact();
        Set<Integer> weekdays = new HashSet<>();
        for (Object d : (List<?>) window.get("weekdays")) weekdays.add(((BigInteger) d).intValueExact());
        LocalDate day = from.atZone(zone).toLocalDate();
        for (int k = 0; k < 15; k++, day = day.plusDays(1)) {
            if (!weekdays.contains(day.getDayOfWeek().getValue() - 1)) continue;  // Monday = 0
            Instant opens = ZonedDateTime.of(day.atTime(start, 0), zone).toInstant();
            Instant closes = end == 24 ? day.plusDays(1).atStartOfDay(zone).toInstant()
                    : ZonedDateTime.of(day.atTime(end, 0), zone).toInstant();
            Instant candidate = from.isAfter(opens) ? from : opens;
            if (candidate.isBefore(closes)) return candidate;
        }
        return null;  // no window in the next two weeks (no weekdays): never locks
    }

    // ---------------------------------------------------------------- the harness

    static String run(Map<String, Object> vector) throws Exception {
        long clock = 1_000_000;  // any value: only differences count
        long appliedAt = clock;
        Phone phone = new Phone(castMap(vector.get("phone")), clock);
        List<?> steps = (List<?>) vector.get("steps");
        if (steps.isEmpty()) return "no steps";
        for (int n = 0; n < steps.size(); n++) {
            Map<String, Object> step = castMap(steps.get(n));
            Map<String, Object> input = castMap(step.get("input"));
            Map<String, Object> expect = castMap(step.get("expect"));
            Map<String, Object> got = new LinkedHashMap<>();
            switch ((String) input.get("type")) {
                case "command" -> {
                    String verdict = phone.receiveCommand(input.get("envelope"), clock);
                    if (verdict.equals("apply")) appliedAt = clock;
                    got.put("verdict", verdict);
                    got.put("state", phone.current == null ? NULL : phone.current.state());
                    got.put("last_seq", BigInteger.valueOf(phone.lastSeq));
                    if (expect.containsKey("reason")) got.put("reason", phone.current.members().get("reason"));
                }
                case "key_statement" -> {
                    got.put("verdict", phone.receiveKeyStatement(input.get("envelope")));
                    got.put("trusted_key_ids", new ArrayList<Object>(phone.trusted.keySet()));
                }
                case "time", "offline_code" -> {
                    if (input.get("type").equals("time")) {
                        clock = appliedAt + ((BigInteger) input.get("monotonic_elapsed_seconds")).longValueExact();
                    } else {
                        phone.offlineCode(((BigInteger) input.get("days")).intValueExact(), clock);
                    }
                    Shown shown = phone.shows(clock);
                    got.put("shows", shown.state());
                    got.put("warning", shown.warning());
                }
                default -> throw new IllegalArgumentException("unknown step type " + input.get("type"));
            }
            for (Map.Entry<String, Object> e : expect.entrySet()) {
                if (!Objects.equals(e.getValue(), got.get(e.getKey()))) {
                    return "step " + (n + 1) + " (" + input.get("type") + "): expected " + e.getKey() + " "
                            + show(e.getValue()) + ", got " + show(got.get(e.getKey())) + "; expected " + expect.keySet()
                            + " got " + show(got);
                }
            }
        }
        return null;
    }

    static String show(Object o) {
        String text = String.valueOf(o);
        return text.length() > 200 ? text.substring(0, 200) + "..." : text;
    }

    public static void main(String[] args) throws IOException {
        if (args.length != 1) {
            System.err.println("usage: java conformance/java/Conformance.java <vectors directory>");
            System.exit(2);
        }
        List<Path> files;
        try (Stream<Path> listing = Files.list(Path.of(args[0]))) {
            files = listing.filter(p -> p.toString().endsWith(".json")).sorted().collect(Collectors.toList());
        }
        int passed = 0;
        int failed = 0;
        for (Path file : files) {
            Object parsed = Json.parse(Files.readString(file, StandardCharsets.UTF_8));
            if (!(parsed instanceof Map<?, ?> vector) || !vector.containsKey("steps")) continue;  // keys.json
            String name = String.valueOf(vector.get("name"));
            String why;
            try {
                why = run(castMap(vector));
            } catch (Exception | Error e) {
                why = "error " + e;
            }
            if (why == null) {
                passed++;
                System.out.println("PASS " + name);
            } else {
                failed++;
                System.out.println("FAIL " + name + ": " + why);
            }
        }
        System.out.println(passed + " passed, " + failed + " failed");
        System.exit(failed == 0 && passed > 0 ? 0 : 1);
    }
}
