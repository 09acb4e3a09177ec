// SPDX-License-Identifier: MIT
#include "layering.h"

#include "base/error.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

namespace together::layering {

namespace fs = std::filesystem;

namespace {

std::vector<std::string> cellsOf(const std::string& line)
{
    std::vector<std::string> cells;
    std::istringstream in(line);
    for (std::string c; in >> c;)
        cells.push_back(c);
    return cells;
}

std::string joined(const std::set<std::string>& names)
{
    std::string s;
    for (auto& n : names)
        s += (s.empty() ? "" : ", ") + n;
    return s.empty() ? "nothing" : s;
}

bool isSource(const fs::path& p)
{
    const std::string e = p.extension().string();
    return e == ".h" || e == ".hpp" || e == ".cpp" || e == ".cc" || e == ".inc";
}

// A file's text as the preprocessor sees its directives: lines spliced at a backslash-newline, comments gone,
// string and character literals kept whole (an #include's "header" is one) and raw strings blanked. Each character
// keeps the line it came from.
struct Logical {
    std::string text;
    std::vector<int> lineOf;
};

Logical splice(const std::string& raw)
{
    Logical out;
    int line = 1;
    for (size_t i = 0; i < raw.size(); ++i) {
        if (raw[i] == '\\' && i + 1 < raw.size() && raw[i + 1] == '\n') {
            ++i;
            ++line;
            continue;
        }
        out.text += raw[i];
        out.lineOf.push_back(line);
        if (raw[i] == '\n')
            ++line;
    }
    return out;
}

bool numberBefore(const std::string& s, size_t i)
{
    size_t j = i;
    while (j > 0 && (std::isxdigit(static_cast<unsigned char>(s[j - 1])) || s[j - 1] == '\'' || s[j - 1] == 'x' || s[j - 1] == 'X' ||
                     s[j - 1] == '.'))
        --j;
    return j < i && std::isdigit(static_cast<unsigned char>(s[j]));
}

Logical withoutComments(const Logical& in)
{
    Logical out;
    const std::string& s = in.text;
    auto keep = [&](size_t i) {
        out.text += s[i];
        out.lineOf.push_back(in.lineOf[i]);
    };
    size_t i = 0;
    while (i < s.size()) {
        if (s.compare(i, 2, "//") == 0) {
            while (i < s.size() && s[i] != '\n')
                ++i;
        } else if (s.compare(i, 2, "/*") == 0) {
            const size_t end = s.find("*/", i + 2);
            const size_t stop = end == std::string::npos ? s.size() : end + 2;
            out.text += ' ';
            out.lineOf.push_back(in.lineOf[i]);
            for (; i < stop; ++i)
                if (s[i] == '\n')
                    keep(i);
        } else if (s[i] == 'R' && i + 1 < s.size() && s[i + 1] == '"' && (i == 0 || !std::isalnum(static_cast<unsigned char>(s[i - 1])) ||
                                                                       s[i - 1] == '8' || s[i - 1] == 'L' || s[i - 1] == 'u' || s[i - 1] == 'U')) {
            const size_t open = s.find('(', i + 2);
            const std::string close = open == std::string::npos ? "" : ")" + s.substr(i + 2, open - i - 2) + "\"";
            const size_t end = close.empty() ? std::string::npos : s.find(close, open);
            const size_t stop = end == std::string::npos ? s.size() : end + close.size();
            // A raw string spans lines: its text becomes blanks (its lines kept), so no line inside it looks
            // like a directive.
            for (; i < stop; ++i) {
                keep(i);
                if (i > open && i < end && out.text.back() != '\n')
                    out.text.back() = ' ';
            }
        } else if (s[i] == '"' || (s[i] == '\'' && !numberBefore(s, i))) {
            const char quote = s[i];
            keep(i++);
            while (i < s.size() && s[i] != quote && s[i] != '\n') {
                if (s[i] == '\\' && i + 1 < s.size())
                    keep(i++);
                keep(i++);
            }
            if (i < s.size())
                keep(i++);
        } else {
            keep(i++);
        }
    }
    return out;
}

struct Directive {
    int line = 0;
    std::string text;    // as written, spliced and without comments
    std::string spelled; // inside the quotes or brackets; "" for a computed include
    bool quoted = false;
};

std::vector<Directive> includesOf(const std::string& raw)
{
    const Logical text = withoutComments(splice(raw));
    std::vector<Directive> out;
    size_t start = 0;
    while (start < text.text.size()) {
        size_t end = text.text.find('\n', start);
        if (end == std::string::npos)
            end = text.text.size();
        const std::string line = text.text.substr(start, end - start);
        const int number = text.lineOf.empty() ? 0 : text.lineOf[std::min(start, text.lineOf.size() - 1)];
        start = end + 1;
        size_t i = line.find_first_not_of(" \t");
        if (i == std::string::npos || line[i] != '#')
            continue;
        i = line.find_first_not_of(" \t", i + 1);
        if (i == std::string::npos)
            continue;
        size_t word = i;
        while (word < line.size() && (std::isalnum(static_cast<unsigned char>(line[word])) || line[word] == '_'))
            ++word;
        const std::string name = line.substr(i, word - i);
        if (name != "include" && name != "include_next" && name != "import")
            continue;
        Directive d;
        d.line = number;
        d.text = line.substr(line.find('#'));
        const size_t op = line.find_first_not_of(" \t", word);
        if (op != std::string::npos && (line[op] == '"' || line[op] == '<')) {
            const size_t close = line.find(line[op] == '"' ? '"' : '>', op + 1);
            if (close != std::string::npos) {
                d.spelled = line.substr(op + 1, close - op - 1);
                d.quoted = line[op] == '"';
            }
        }
        out.push_back(d);
    }
    return out;
}

bool matchesHeader(const std::string& pattern, const std::string& spelled)
{
    if (pattern == "Q*")
        return spelled.size() > 1 && spelled[0] == 'Q' && std::isalpha(static_cast<unsigned char>(spelled[1])) &&
               spelled.find('/') == std::string::npos;
    if (!pattern.empty() && pattern.back() == '/')
        return spelled.rfind(pattern, 0) == 0;
    return spelled == pattern;
}

// `p` relative to `root` when it lies inside it (symlinks followed), else "".
std::string insideRoot(const fs::path& root, const fs::path& p)
{
    std::error_code ec;
    if (!fs::is_regular_file(p, ec))
        return "";
    const fs::path real = fs::weakly_canonical(p, ec);
    if (ec)
        return "";
    const fs::path rel = real.lexically_relative(root);
    if (rel.empty() || *rel.begin() == "..")
        return "";
    return rel.generic_string();
}

class Checker {
public:
    Checker(const fs::path& root, const Table& table)
        : m_root(fs::weakly_canonical(root))
        , m_table(table)
    {
    }

    void file(const std::string& rel, std::vector<Violation>& out) const
    {
        const Library* lib = m_table.libraryOf(rel);
        if (!lib) {
            out.push_back({rel, 0, "", "the file belongs to no library of cmake/layers.txt (put it in a library's folder)"});
            return;
        }
        std::ifstream in(m_root / rel, std::ios::binary);
        std::stringstream ss;
        ss << in.rdbuf();
        for (const Directive& d : includesOf(ss.str())) {
            const std::string why = problem(rel, *lib, d);
            if (!why.empty())
                out.push_back({rel, d.line, d.text, why});
        }
    }

private:
    std::string problem(const std::string& rel, const Library& lib, const Directive& d) const
    {
        if (d.spelled.empty())
            return "a computed #include: spell the header in quotes or brackets, so the layering can be checked";
        const std::string spelled = fs::path(d.spelled).lexically_normal().generic_string();
        for (auto& [header, why] : m_table.banned)
            if (spelled == header || (spelled.size() > header.size() && spelled.compare(spelled.size() - header.size() - 1, std::string::npos, "/" + header) == 0))
                return "<" + header + "> is banned: " + why;
        const std::string target = resolve(rel, d);
        if (!target.empty())
            return edge(lib, target);
        bool known = false;
        if (const std::string why = package(lib, spelled, known); !why.empty() || known)
            return why;
        // A quoted header names one of ours or a package's; the system's are spelled with brackets.
        if (d.quoted)
            return "\"" + d.spelled + "\" is not a header of this tree or of a package of cmake/layers.txt";
        return "";
    }

    // The file in the tree the include names, as the compiler would look for it: beside the including file (quotes
    // only), under a library's include root ("<library>/..."), or from the repository's root.
    std::string resolve(const std::string& rel, const Directive& d) const
    {
        const fs::path spelled(d.spelled);
        if (d.quoted)
            if (std::string t = insideRoot(m_root, m_root / fs::path(rel).parent_path() / spelled); !t.empty())
                return t;
        const std::string first = spelled.begin() == spelled.end() ? "" : spelled.begin()->string();
        if (const Library* owner = m_table.library(first)) {
            fs::path rest;
            for (auto it = std::next(spelled.begin()); it != spelled.end(); ++it)
                rest /= *it;
            if (std::string t = insideRoot(m_root, m_root / owner->folder / rest); !t.empty())
                return t;
        }
        return insideRoot(m_root, m_root / spelled);
    }

    std::string edge(const Library& lib, const std::string& target) const
    {
        const Library* owner = m_table.libraryOf(target);
        if (!owner)
            return target + " belongs to no library of cmake/layers.txt";
        if (owner->name == lib.name || lib.uses.count(owner->name))
            return "";
        return lib.name + " may not use " + owner->name + " (" + target + "): its row in cmake/layers.txt allows " + joined(lib.uses);
    }

    // "" when the header is no package's (`known` false) or a package's the library may use; else why not.
    std::string package(const Library& lib, const std::string& spelled, bool& known) const
    {
        std::set<std::string> matching;
        for (auto& [name, p] : m_table.packages)
            for (auto& h : p.headers)
                if (matchesHeader(h, spelled))
                    matching.insert(name);
        known = !matching.empty();
        if (matching.empty())
            return "";
        for (auto& m : matching)
            if (lib.packages.count(m))
                return "";
        return lib.name + " may not use the package " + joined(matching) + " (<" + spelled + ">): its row in cmake/layers.txt allows " +
               joined(lib.packages);
    }

    fs::path m_root;
    const Table& m_table;
};

} // namespace

Table Table::read(const std::string& path)
{
    Table t;
    std::ifstream in(path);
    if (!in)
        throw Error("cannot read " + path);
    std::string section;
    std::vector<std::pair<int, std::vector<std::string>>> rows;
    int number = 0;
    for (std::string line; std::getline(in, line);) {
        ++number;
        const auto cells = cellsOf(line);
        if (cells.empty() || cells[0][0] == '#')
            continue;
        if (cells[0].front() == '[') {
            section = cells[0];
            continue;
        }
        const std::string where = path + ":" + std::to_string(number);
        if (section == "[libraries]") {
            if (cells.size() < 4)
                throw Error(where + ": a library's row needs a name, a folder, uses and packages ('-' for none)");
            rows.emplace_back(number, cells);
        } else if (section == "[packages]") {
            Package p;
            p.name = cells[0];
            for (size_t i = 1; i < cells.size(); ++i) {
                const std::string& c = cells[i];
                const bool header = c.back() == '/' || c.find('.') != std::string::npos || c.find('*') != std::string::npos;
                (header ? p.headers : p.targets).push_back(c);
            }
            t.packages[p.name] = p;
        } else if (section == "[banned]") {
            std::string why;
            for (size_t i = 1; i < cells.size(); ++i)
                why += (why.empty() ? "" : " ") + cells[i];
            t.banned[cells[0]] = why;
        } else {
            throw Error(where + ": a row outside [libraries], [packages] or [banned]");
        }
    }
    for (auto& [n, cells] : rows) {
        Library l;
        l.name = cells[0];
        l.folder = cells[1];
        t.libraries.push_back(l);
    }
    for (size_t r = 0; r < rows.size(); ++r) {
        const auto& cells = rows[r].second;
        for (size_t i = 2; i < cells.size(); ++i) {
            if (cells[i] == "-")
                continue;
            if (t.library(cells[i]))
                t.libraries[r].uses.insert(cells[i]);
            else if (t.packages.count(cells[i]))
                t.libraries[r].packages.insert(cells[i]);
            else
                throw Error(path + ":" + std::to_string(rows[r].first) + ": '" + cells[i] + "' is neither a library nor a package");
        }
    }
    return t;
}

const Library* Table::library(const std::string& name) const
{
    for (auto& l : libraries)
        if (l.name == name)
            return &l;
    return nullptr;
}

const Library* Table::libraryOf(const std::string& relativePath) const
{
    const Library* best = nullptr;
    for (auto& l : libraries)
        if (relativePath.rfind(l.folder + "/", 0) == 0 && (!best || l.folder.size() > best->folder.size()))
            best = &l;
    return best;
}

std::set<std::string> Table::closure(const std::string& name) const
{
    std::set<std::string> seen;
    std::vector<std::string> todo{name};
    while (!todo.empty()) {
        const std::string n = todo.back();
        todo.pop_back();
        if (const Library* l = library(n))
            for (auto& u : l->uses)
                if (seen.insert(u).second)
                    todo.push_back(u);
    }
    return seen;
}

std::string Table::cycle() const
{
    std::map<std::string, int> state; // 1: on the path, 2: done
    std::vector<std::string> path;
    std::string found;
    std::function<void(const std::string&)> visit = [&](const std::string& n) {
        if (!found.empty() || state[n] == 2)
            return;
        if (state[n] == 1) {
            const auto from = std::find(path.begin(), path.end(), n);
            for (auto it = from; it != path.end(); ++it)
                found += *it + " -> ";
            found += n;
            return;
        }
        state[n] = 1;
        path.push_back(n);
        if (const Library* l = library(n))
            for (auto& u : l->uses)
                visit(u);
        path.pop_back();
        state[n] = 2;
    };
    for (auto& l : libraries)
        visit(l.name);
    return found;
}

std::string describe(const Violation& v)
{
    return v.file + (v.line ? ":" + std::to_string(v.line) : "") + (v.include.empty() ? "" : ": " + v.include) + ": " + v.why;
}

std::vector<Violation> check(const std::string& root, const Table& table)
{
    std::set<std::string> tops;
    for (auto& l : table.libraries)
        tops.insert(fs::path(l.folder).begin()->string());
    // Each file once, where it really is: a symlink to a header of another library is that library's header.
    const fs::path realRoot = fs::weakly_canonical(root);
    std::set<std::string> files;
    for (auto& top : tops) {
        std::error_code ec;
        for (auto it = fs::recursive_directory_iterator(fs::path(root) / top, ec); !ec && it != fs::recursive_directory_iterator(); it.increment(ec))
            if (isSource(it->path()))
                if (std::string rel = insideRoot(realRoot, it->path()); !rel.empty())
                    files.insert(rel);
    }
    Checker checker(root, table);
    std::vector<Violation> out;
    for (auto& f : files)
        checker.file(f, out);
    return out;
}

std::map<std::string, std::set<std::string>> documentedUses(const std::string& markdown)
{
    auto cellsOfRow = [](const std::string& line) {
        std::vector<std::string> cells;
        std::string cell;
        for (size_t i = 1; i < line.size(); ++i) {
            if (line[i] == '|') {
                cells.push_back(cell);
                cell.clear();
            } else if (line[i] != '`') {
                cell += line[i];
            }
        }
        for (auto& c : cells) {
            const size_t a = c.find_first_not_of(' '), b = c.find_last_not_of(' ');
            c = a == std::string::npos ? "" : c.substr(a, b - a + 1);
        }
        return cells;
    };
    std::map<std::string, std::set<std::string>> out;
    std::istringstream in(markdown);
    bool inTable = false;
    for (std::string line; std::getline(in, line);) {
        if (line.rfind("|", 0) != 0) {
            if (inTable)
                break;
            continue;
        }
        const auto cells = cellsOfRow(line);
        if (!inTable) {
            inTable = cells.size() >= 3 && cells[0] == "library" && cells[2] == "may use";
            continue;
        }
        if (cells.size() < 3 || cells[0].find_first_not_of("-: ") == std::string::npos)
            continue;
        std::set<std::string> uses;
        std::string word;
        for (char c : cells[2] + ",") {
            if (c == ',' || c == ' ') {
                if (!word.empty() && word != "—" && word != "-")
                    uses.insert(word);
                word.clear();
            } else {
                word += c;
            }
        }
        out[cells[0]] = uses;
    }
    return out;
}

} // namespace together::layering
