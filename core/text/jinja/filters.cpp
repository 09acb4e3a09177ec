// SPDX-License-Identifier: MIT
// Chat templates: filters, tests, and the methods of strings.
#include "text/jinja/internal.h"

#include "base/unicode.h"

#include <climits>
#include <cmath>
#include <cstring>
#include <optional>
#include <sstream>

namespace together::jinja::detail {

namespace {

std::string trimChars(const std::string& s, const std::string& chars, bool left, bool right, size_t* startOut)
{
    auto isStrip = [&](char c) {
        return chars.empty() ? std::isspace(static_cast<unsigned char>(c)) != 0 : chars.find(c) != std::string::npos;
    };
    size_t b = 0, e = s.size();
    if (left)
        while (b < e && isStrip(s[b]))
            ++b;
    if (right)
        while (e > b && isStrip(s[e - 1]))
            --e;
    *startOut = b;
    return s.substr(b, e - b);
}

Str stripStr(const Str& s, const std::string& chars, bool left, bool right)
{
    size_t start = 0;
    std::string t = trimChars(s.s, chars, left, right, &start);
    return s.sub(start, t.size());
}

std::string asciiCase(std::string s, int mode) // 0 lower, 1 upper, 2 title, 3 capitalize
{
    bool startWord = true;
    for (size_t i = 0; i < s.size(); ++i) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        if (mode == 0)
            s[i] = static_cast<char>(std::tolower(c));
        else if (mode == 1)
            s[i] = static_cast<char>(std::toupper(c));
        else if (mode == 2) {
            s[i] = static_cast<char>(startWord ? std::toupper(c) : std::tolower(c));
            startWord = !std::isalnum(c);
        } else {
            s[i] = static_cast<char>(i == 0 ? std::toupper(c) : std::tolower(c));
        }
    }
    return s;
}

// A string method's string argument: absent, none and undefined read as "" (the default: whitespace for strip
// and split).
std::string strArg(const Args& a, size_t i, const std::string& kw, int line)
{
    const Value* v = a.get(i, kw);
    if (!v || v->isNone() || v->isUndefined())
        return {};
    if (!v->isString())
        runtimeError(line, "string method argument must be a string");
    return v->str().s;
}

// startswith / endswith: one prefix (suffix) or a list of them.
Value hasAffix(const Str& s, bool starts, const Args& a, int line)
{
    const Value* p = a.get(0, "prefix");
    if (!p)
        runtimeError(line, "startswith/endswith need an argument");
    std::vector<std::string> options;
    if (p->isArray())
        for (auto& x : p->arr())
            options.push_back(toStr(x).s);
    else
        options.push_back(toStr(*p).s);
    for (auto& o : options) {
        if (o.size() > s.s.size())
            continue;
        if (starts ? s.s.compare(0, o.size(), o) == 0 : s.s.compare(s.s.size() - o.size(), o.size(), o) == 0)
            return Value(true);
    }
    return Value(false);
}

Value splitString(const Str& s, const Args& a, int line)
{
    std::string sep = strArg(a, 0, "sep", line);
    const Value* mv = a.get(1, "maxsplit");
    int64_t maxsplit = mv && mv->isInt() ? mv->integer() : -1;
    Array parts;
    if (sep.empty()) { // whitespace split, dropping empties
        size_t i = 0;
        while (i < s.s.size()) {
            while (i < s.s.size() && std::isspace(static_cast<unsigned char>(s.s[i])))
                ++i;
            if (i >= s.s.size())
                break;
            size_t j = i;
            if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
                size_t start = 0;
                std::string rest = trimChars(s.s.substr(i), "", false, true, &start);
                parts.push_back(Value(s.sub(i, rest.size())));
                break;
            }
            while (j < s.s.size() && !std::isspace(static_cast<unsigned char>(s.s[j])))
                ++j;
            checkItems(parts.size() + 1); // refused while splitting, not after building every piece
            parts.push_back(Value(s.sub(i, j - i)));
            i = j;
        }
        return makeArray(std::move(parts));
    }
    size_t prev = 0, pos;
    const Finder finder(sep);
    while ((pos = finder.find(s.s, prev)) != std::string::npos &&
           (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit)) {
        checkItems(parts.size() + 2); // this piece and the last one
        parts.push_back(Value(s.sub(prev, pos - prev)));
        prev = pos + sep.size();
    }
    parts.push_back(Value(s.sub(prev)));
    return makeArray(std::move(parts));
}

// The replacement text is untrusted where the string it goes into has any untrusted byte (`marked`).
Value replaceString(const Str& s, bool marked, const Args& a, int line)
{
    std::string from = strArg(a, 0, "old", line), to = strArg(a, 1, "new", line);
    const Value* cv = a.get(2, "count");
    int64_t count = cv && cv->isInt() ? cv->integer() : -1;
    Str out;
    size_t prev = 0, pos;
    int64_t done = 0;
    if (from.empty())
        return Value(s);
    const Finder finder(from);
    while ((count < 0 || done < count) && (pos = finder.find(s.s, prev)) != std::string::npos) {
        out.append(s.sub(prev, pos - prev));
        out.append(Str::derived(to, marked));
        prev = pos + from.size();
        ++done;
    }
    out.append(s.sub(prev));
    return Value(out);
}

// find: the first occurrence's byte offset or -1; count: the non-overlapping occurrences (Python's, so an empty
// needle occurs once more than the string has bytes).
Value findOrCount(const Str& s, bool isFind, const Args& a, int line)
{
    const std::string sub = strArg(a, 0, "sub", line);
    const Finder needle(sub);
    if (isFind) {
        size_t p = needle.find(s.s);
        return Value(p == std::string::npos ? int64_t(-1) : static_cast<int64_t>(p));
    }
    if (needle.size() == 0)
        return Value(static_cast<int64_t>(s.s.size() + 1));
    int64_t n = 0;
    for (size_t p = needle.find(s.s); p != std::string::npos; p = needle.find(s.s, p + needle.size()))
        ++n;
    return Value(n);
}

Value joinWith(const Str& s, const Args& a, int line)
{
    if (a.positional.empty())
        runtimeError(line, "join needs an iterable");
    Str out;
    bool first = true;
    for (auto& x : iterate(a.positional[0], line)) {
        if (!first)
            out.append(s);
        first = false;
        out.append(toStr(x));
    }
    return Value(out);
}

// "{}" placeholders filled in order; the result is untrusted as a whole if the format or any argument was.
Value formatString(const Str& s, bool marked, const Args& a)
{
    std::string out;
    size_t ai = 0;
    bool m = marked;
    for (size_t i = 0; i < s.s.size(); ++i) {
        if (s.s[i] == '{' && i + 1 < s.s.size() && s.s[i + 1] == '}' && ai < a.positional.size()) {
            out += toStr(a.positional[ai]).s;
            checkStringSize(out.size()); // before the next argument, not after all of them
            m = m || isMarked(a.positional[ai]);
            ++ai;
            ++i;
        } else {
            out += s.s[i];
        }
    }
    return Value(Str::derived(out, m));
}

} // namespace

Value stringMethod(const Value& self, const std::string& name, int line)
{
    const Str s = self.str();
    const bool marked = s.anyMarked();
    if (name == "startswith" || name == "endswith") {
        bool starts = name == "startswith";
        return makeFn([s, starts, line](const Args& a) -> Value { return hasAffix(s, starts, a, line); });
    }
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
        bool l = name != "rstrip", r = name != "lstrip";
        return makeFn([s, l, r, line](const Args& a) -> Value { return Value(stripStr(s, strArg(a, 0, "chars", line), l, r)); });
    }
    if (name == "split")
        return makeFn([s, line](const Args& a) -> Value { return splitString(s, a, line); });
    if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
        int mode = name == "lower" ? 0 : name == "upper" ? 1 : name == "title" ? 2 : 3;
        return makeFn([s, mode](const Args&) -> Value {
            Str r = s;
            r.s = asciiCase(s.s, mode); // ASCII case mapping keeps byte positions, so marks stay aligned
            return Value(r);
        });
    }
    if (name == "replace")
        return makeFn([s, marked, line](const Args& a) -> Value { return replaceString(s, marked, a, line); });
    if (name == "find" || name == "count") {
        bool isFind = name == "find";
        return makeFn([s, isFind, line](const Args& a) -> Value { return findOrCount(s, isFind, a, line); });
    }
    if (name == "join")
        return makeFn([s, line](const Args& a) -> Value { return joinWith(s, a, line); });
    if (name == "format")
        return makeFn([s, marked](const Args& a) -> Value { return formatString(s, marked, a); });
    runtimeError(line, "strings have no method '" + name + "'");
}

namespace {

int64_t lengthOf(const Value& v, int line)
{
    if (v.isArray())
        return static_cast<int64_t>(v.arr().size());
    if (v.isObject())
        return static_cast<int64_t>(v.obj().items.size());
    if (v.isString())
        return static_cast<int64_t>(unicode::countCodepoints(v.str().s));
    if (v.isUndefined())
        return 0;
    runtimeError(line, "value has no length");
}

bool testValue(const std::string& name, const Value& v, const Args& a, int line)
{
    if (name == "defined")
        return !v.isUndefined();
    if (name == "undefined")
        return v.isUndefined();
    if (name == "none")
        return v.isNone();
    if (name == "string")
        return v.isString();
    if (name == "number")
        return v.isNumber();
    if (name == "integer")
        return v.isInt();
    if (name == "float")
        return v.isFloat();
    if (name == "boolean")
        return v.isBool();
    if (name == "true")
        return v.isBool() && std::get<bool>(v.v);
    if (name == "false")
        return v.isBool() && !std::get<bool>(v.v);
    if (name == "mapping")
        return v.isObject();
    if (name == "iterable")
        return v.isArray() || v.isObject() || v.isString();
    if (name == "sequence")
        return v.isArray() || v.isString() || v.isObject();
    if (name == "callable")
        return v.isCallable();
    if (name == "even" || name == "odd") {
        if (!v.isInt())
            runtimeError(line, "test '" + name + "' needs an integer");
        return (v.integer() % 2 == 0) == (name == "even");
    }
    if (name == "divisibleby") {
        if (!v.isInt() || a.positional.empty() || !a.positional[0].isInt() || a.positional[0].integer() == 0)
            runtimeError(line, "test 'divisibleby' needs integers");
        const int64_t d = a.positional[0].integer();
        return d == -1 || v.integer() % d == 0; // (INT64_MIN % -1 traps)
    }
    if (name == "equalto" || name == "eq" || name == "sameas" || name == "==")
        return !a.positional.empty() && equals(v, a.positional[0]);
    if (name == "ne" || name == "!=")
        return a.positional.empty() || !equals(v, a.positional[0]);
    if (name == "in")
        return !a.positional.empty() && a.positional[0].isArray() &&
               std::any_of(a.positional[0].arr().begin(), a.positional[0].arr().end(), [&](auto& x) { return equals(v, x); });
    if (name == "lower" || name == "upper") {
        if (!v.isString())
            return false;
        return v.str().s == asciiCase(v.str().s, name == "lower" ? 0 : 1);
    }
    runtimeError(line, "unknown test '" + name + "'");
}

} // namespace

Value Evaluator::runTest(const Expr& e, Scope& scope)
{
    Value v = eval(*e.kids[0], scope);
    bool r = testValue(e.name, v, evalArgs(e, scope), e.line);
    return Value(e.negate ? !r : r);
}

// ---------------------------------------------------------------------------------------------------------
// Filters, grouped by what they act on. Each group returns nothing for a name that is not one of its filters.

namespace {

// Filters on any value. (`Value(v)`, `Value(*def)`: a conditional of a const value and a new one is a const value,
// which std::optional would copy, and a string's copy counts as text built.)
std::optional<Value> valueFilter(const std::string& f, const Value& v, const Args& a, int line)
{
    if (f == "length" || f == "count")
        return Value(lengthOf(v, line));
    if (f == "string")
        return Value(toStr(v));
    if (f == "tojson") {
        const Value* ind = a.get(0, "indent");
        std::string out;
        const int64_t indent = ind && ind->isInt() ? ind->integer() : 0;
        if (indent < 0 || indent > 64)
            runtimeError(line, "tojson indent must be 0 to 64");
        dumpPython(toJson(v), out, static_cast<int>(indent), 0);
        return Value(Str::derived(out, isMarked(v)));
    }
    if (f == "safe" || f == "e" || f == "escape" || f == "forceescape")
        return f == "safe" ? Value(v) : Value(toStr(v)); // no autoescape in chat templates
    if (f == "default" || f == "d") {
        const Value* def = a.get(0, "default_value");
        const Value* boolean = a.get(1, "boolean");
        bool useDefault = v.isUndefined() || (boolean && truthy(*boolean) && !truthy(v));
        return useDefault ? (def ? Value(*def) : Value(Str{})) : Value(v);
    }
    return std::nullopt;
}

// indent: every line but the first (unless `first`) and the blank ones (unless `blank`) gets the padding.
Value indentLines(const Value& v, const Args& a, int line)
{
    const Value* w = a.get(0, "width");
    const Value* firstV = a.get(1, "first");
    const Value* blankV = a.get(2, "blank");
    const int64_t width = w && w->isInt() ? w->integer() : 4;
    if (!(w && w->isString()) && (width < 0 || width > 1024))
        runtimeError(line, "indent width must be 0 to 1024");
    std::string pad = w && w->isString() ? w->str().s : std::string(static_cast<size_t>(width), ' ');
    bool first = firstV && truthy(*firstV), blank = blankV && truthy(*blankV);
    Str s = toStr(v);
    std::string out;
    size_t lineStart = 0;
    bool isFirst = true;
    while (lineStart <= s.s.size()) {
        size_t nl = s.s.find('\n', lineStart);
        std::string ln = s.s.substr(lineStart, nl == std::string::npos ? std::string::npos : nl - lineStart);
        if ((!isFirst || first) && (blank || !ln.empty()))
            out += pad;
        out += ln;
        checkStringSize(out.size()); // (padding every line of a long text multiplies it)
        if (nl == std::string::npos)
            break;
        out += '\n';
        lineStart = nl + 1;
        isFirst = false;
    }
    return Value(Str::derived(out, s.anyMarked()));
}

// Filters on text: the value is read as its string.
std::optional<Value> textFilter(const std::string& f, const Value& v, const Args& a, int line)
{
    if (f == "trim") {
        const Value* chars = a.get(0, "chars");
        return Value(stripStr(toStr(v), chars && chars->isString() ? chars->str().s : "", true, true));
    }
    if (f == "upper" || f == "lower" || f == "title" || f == "capitalize")
        return stringMethod(Value(toStr(v)), f, line).fn().call({});
    if (f == "replace")
        return stringMethod(Value(toStr(v)), "replace", line).fn().call(a);
    if (f == "indent")
        return indentLines(v, a, line);
    if (f == "wordcount") {
        Value parts = stringMethod(Value(toStr(v)), "split", line).fn().call({});
        return Value(static_cast<int64_t>(parts.arr().size()));
    }
    return std::nullopt;
}

// Filters on numbers. int and float make 0 of what does not convert, as Jinja's do.
std::optional<Value> numberFilter(const std::string& f, const Value& v, const Args& a, int line)
{
    if (f == "int") {
        if (v.isInt())
            return v;
        if (v.isFloat())
            return std::isfinite(v.num()) && std::fabs(v.num()) < 9.2e18 ? Value(static_cast<int64_t>(v.num())) : Value(int64_t(0));
        if (v.isString()) {
            try {
                return Value(static_cast<int64_t>(std::stoll(v.str().s)));
            } catch (...) {
                return Value(int64_t(0)); // Jinja's int filter: the default (0) for what does not convert
            }
        }
        return Value(int64_t(0));
    }
    if (f == "float") {
        if (v.isNumber())
            return Value(v.num());
        if (v.isString()) {
            try {
                return Value(std::stod(v.str().s));
            } catch (...) {
                return Value(0.0);
            }
        }
        return Value(0.0);
    }
    if (f == "abs") {
        if (!v.isNumber())
            runtimeError(line, "abs needs a number");
        if (v.isInt() && v.integer() == INT64_MIN)
            runtimeError(line, "integer result does not fit in 64 bits");
        return v.isInt() ? Value(static_cast<int64_t>(std::llabs(v.integer()))) : Value(std::fabs(v.num()));
    }
    if (f == "round") {
        const Value* prec = a.get(0, "precision");
        double p = std::pow(10.0, prec && prec->isInt() ? static_cast<double>(prec->integer()) : 0.0);
        if (!v.isNumber())
            runtimeError(line, "round needs a number");
        return Value(std::round(v.num() * p) / p);
    }
    return std::nullopt;
}

// reverse of a string: each code point copied to its mirrored place, no string per character.
Value reverseText(const Str& str)
{
    const std::string& text = str.s;
    std::string out(text.size(), '\0');
    for (size_t i = 0; i < text.size();) {
        const size_t end = unicode::nextCodepoint(text, i);
        std::copy(text.begin() + static_cast<std::ptrdiff_t>(i), text.begin() + static_cast<std::ptrdiff_t>(end),
                  out.end() - static_cast<std::ptrdiff_t>(end));
        i = end;
    }
    return Value(Str::derived(std::move(out), str.anyMarked()));
}

} // namespace

// Filters on lists, and on what iterates like one (a mapping's keys, a string's characters).
std::optional<Value> Evaluator::listFilter(const std::string& f, const Value& v, const Args& a, int line, Scope& scope)
{
    if (f == "first" || f == "last") {
        Array items = iterate(v, line);
        if (items.empty())
            return Value();
        return f == "first" ? items.front() : items.back();
    }
    if (f == "join") {
        const Value* sep = a.get(0, "d");
        Str s = sep ? toStr(*sep) : Str{};
        return stringMethod(Value(s), "join", line).fn().call(Args{{v}, {}});
    }
    if (f == "list")
        return makeArray(iterate(v, line));
    if (f == "reverse") {
        if (v.isString())
            return reverseText(v.str());
        Array items = iterate(v, line);
        std::reverse(items.begin(), items.end());
        return makeArray(std::move(items));
    }
    if (f == "items") {
        if (!v.isObject())
            runtimeError(line, "items needs a mapping");
        return getAttr(v, "items", line).fn().call({});
    }
    if (f == "dictsort") {
        if (!v.isObject())
            runtimeError(line, "dictsort needs a mapping");
        Array items;
        for (auto& [k, x] : v.obj().items)
            items.push_back(makeArray({Value(k), x}));
        std::sort(items.begin(), items.end(), [](const Value& x, const Value& y) { return x.arr()[0].str().s < y.arr()[0].str().s; });
        return makeArray(std::move(items));
    }
    if (f == "unique") {
        Array out;
        for (auto& x : iterate(v, line)) {
            chargeIterations(static_cast<int64_t>(out.size())); // comparisons: quadratic in the list's length
            if (std::none_of(out.begin(), out.end(), [&](auto& y) { return equals(x, y); }))
                out.push_back(x);
        }
        return makeArray(std::move(out));
    }
    if (f == "sort")
        return sortItems(v, a, line);
    if (f == "selectattr" || f == "rejectattr" || f == "select" || f == "reject")
        return selectItems(f, v, a, line);
    if (f == "map")
        return mapItems(v, a, line, scope);
    return std::nullopt;
}

Value Evaluator::sortItems(const Value& v, const Args& a, int line)
{
    Array items = iterate(v, line);
    const Value* attr = a.kw("attribute");
    const Value* rev = a.get(0, "reverse");
    auto key = [&](const Value& x) { return attr ? getAttr(x, toStr(*attr).s, line) : x; };
    std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
        Value kx = key(x), ky = key(y);
        if (kx.isNumber() && ky.isNumber())
            return kx.num() < ky.num();
        return toStr(kx).s < toStr(ky).s;
    });
    if (rev && truthy(*rev))
        std::reverse(items.begin(), items.end());
    return makeArray(std::move(items));
}

// select / reject (items by a test, or by truth), selectattr / rejectattr (the same on one attribute).
Value Evaluator::selectItems(const std::string& f, const Value& v, const Args& a, int line)
{
    bool isAttr = f == "selectattr" || f == "rejectattr";
    bool keep = f == "selectattr" || f == "select";
    size_t ti = isAttr ? 1 : 0;
    std::string attrName = isAttr && !a.positional.empty() ? toStr(a.positional[0]).s : "";
    std::string test = a.positional.size() > ti ? toStr(a.positional[ti]).s : "";
    Args testArgs;
    for (size_t i = ti + 1; i < a.positional.size(); ++i)
        testArgs.positional.push_back(a.positional[i]);
    Array out;
    for (auto& x : iterate(v, line)) {
        Value subject = isAttr ? getAttr(x, attrName, line) : x;
        bool r = test.empty() ? truthy(subject) : testValue(test, subject, testArgs, line);
        if (r == keep)
            out.push_back(x);
    }
    return makeArray(std::move(out));
}

// map(attribute=...) reads an attribute of each item; map('filter') runs that filter on each.
Value Evaluator::mapItems(const Value& v, const Args& a, int line, Scope& scope)
{
    const Value* attr = a.kw("attribute");
    Array out;
    for (auto& x : iterate(v, line)) {
        if (attr) {
            Value r = getAttr(x, toStr(*attr).s, line);
            if (r.isUndefined())
                if (const Value* d = a.kw("default"))
                    r = *d;
            out.push_back(r);
        } else if (!a.positional.empty()) {
            Expr fe;
            fe.kind = Expr::Filter;
            fe.line = line;
            fe.name = toStr(a.positional[0]).s;
            Scope tmp(&scope);
            tmp.set("__item", x);
            auto var = std::make_unique<Expr>();
            var->kind = Expr::Var;
            var->name = "__item";
            fe.kids.push_back(std::move(var));
            out.push_back(callFilter(fe, tmp));
        } else {
            out.push_back(x);
        }
    }
    return makeArray(std::move(out));
}

Value Evaluator::callFilter(const Expr& e, Scope& scope)
{
    Value v = eval(*e.kids[0], scope);
    Args a = evalArgs(e, scope);
    const std::string& f = e.name;
    const int line = e.line;
    if (auto r = valueFilter(f, v, a, line))
        return std::move(*r);
    if (auto r = textFilter(f, v, a, line))
        return std::move(*r);
    if (auto r = numberFilter(f, v, a, line))
        return std::move(*r);
    if (auto r = listFilter(f, v, a, line, scope))
        return std::move(*r);
    runtimeError(line, "unknown filter '" + f + "'");
}

} // namespace together::jinja::detail
